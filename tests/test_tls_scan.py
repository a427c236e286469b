"""An sslyze scan of the TLS listener against Mozilla's "intermediate" profile (5.7).

The certificate comes from a private test CA (trustme), so the one finding it must have, an untrusted
path, is set aside; every protocol, cipher suite, curve, vulnerability and other certificate check
must pass.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartProxy
from tests.tlsutil import TestCA

sslyze = pytest.importorskip("sslyze")
from sslyze.mozilla_tls_profile.tls_config_checker import (  # noqa: E402
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

PRIVATE_CA_FINDINGS = {"certificate_path_validation"}  # a test CA is in no trust store


def scan(port: int, ca_file: Path) -> Any:
    location = sslyze.ServerNetworkLocation("localhost", port, ip_address="127.0.0.1")
    extra = sslyze.ScanCommandsExtraArguments(
        certificate_info=sslyze.CertificateInfoExtraArgument(custom_ca_file=ca_file)
    )
    scanner = sslyze.Scanner()
    scanner.queue_scans([sslyze.ServerScanRequest(server_location=location, scan_commands_extra_arguments=extra)])
    (result,) = list(scanner.get_results())
    info = result.scan_result.certificate_info
    assert info.error_trace is None, "".join(info.error_trace.format())
    return result


def findings(result: Any) -> dict[str, str]:
    profile = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    try:
        check_server_against_tls_configuration(result, profile)
    except ServerNotCompliantWithTlsConfiguration as exc:
        return dict(exc.issues)
    return {}


@pytest.mark.timeout(180)
# sslyze's bundled trust stores hold an old root with a negative serial number, which cryptography warns about
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
async def test_listener_meets_mozilla_intermediate(start_proxy: StartProxy, tmp_path: Any) -> None:
    ca = TestCA(tmp_path)
    pair = ca.issue("localhost")
    proxy = await start_proxy(tls={"cert": str(pair.cert), "key": str(pair.key)})
    result = await asyncio.to_thread(scan, proxy.proxy_port, ca.ca_file)
    problems = {key: why for key, why in findings(result).items() if key not in PRIVATE_CA_FINDINGS}
    assert problems == {}
    attempts = result.scan_result
    assert not attempts.tls_1_0_cipher_suites.result.accepted_cipher_suites
    assert not attempts.tls_1_1_cipher_suites.result.accepted_cipher_suites
    assert attempts.tls_1_3_cipher_suites.result.accepted_cipher_suites
    assert attempts.session_resumption.result.tls_ticket_resumption_result.name == "FULLY_SUPPORTED"
