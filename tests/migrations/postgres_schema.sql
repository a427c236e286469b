-- Current production schema (PostgreSQL), as the running version sees it.
CREATE TABLE "Order" (
    id BIGINT PRIMARY KEY,
    "Total" NUMERIC(12, 2) NOT NULL,
    "shipTo" TEXT
);
CREATE TABLE users (
    id BIGINT PRIMARY KEY,
    email VARCHAR(255),
    handle VARCHAR(40) NOT NULL,
    nickname VARCHAR(255),
    karma BIGINT NOT NULL DEFAULT 0,
    age INT,
    status VARCHAR(16) NOT NULL DEFAULT 'active',
    legacy TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMP NOT NULL DEFAULT now()
);
CREATE TABLE audit_log (id BIGSERIAL PRIMARY KEY, body TEXT);
CREATE TABLE sessions (id UUID PRIMARY KEY);
CREATE VIEW order_totals AS SELECT id, "Total" FROM "Order";
