-- Migration 0042 (PostgreSQL): every statement below breaks the version still running.
-- DROP TABLE customers;
/* Disabled, must not be flagged:
   ALTER TABLE "Order" DROP COLUMN legacy_total;
*/
ALTER TABLE "Order" DROP COLUMN "Total";

ALTER TABLE "Order"
    RENAME COLUMN "shipTo" TO ship_to;
ALTER TABLE users ADD COLUMN tenant_id BIGINT NOT NULL;
ALTER TABLE users ALTER COLUMN email SET NOT NULL;
ALTER TABLE users
    ALTER COLUMN nickname TYPE VARCHAR(50),
    ALTER COLUMN karma TYPE INT;
ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email);
CREATE UNIQUE INDEX users_handle_idx ON users (handle);
ALTER TABLE users RENAME TO accounts;
TRUNCATE audit_log;
DROP VIEW order_totals;
ALTER TABLE accounts ALTER COLUMN status DROP DEFAULT;
ALTER TABLE sessions SET SCHEMA archive;
