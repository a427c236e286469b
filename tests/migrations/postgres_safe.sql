-- Expand step (PostgreSQL): everything here keeps the running version working.
-- The contract step ships in a later release:
-- ALTER TABLE users DROP COLUMN legacy;
/* DROP TABLE "Order"; */
CREATE TABLE order_items (
    id BIGSERIAL PRIMARY KEY,
    order_id BIGINT NOT NULL REFERENCES "Order" (id),
    sku VARCHAR(64) NOT NULL
);
CREATE UNIQUE INDEX order_items_sku ON order_items (order_id, sku);
ALTER TABLE users ADD COLUMN display_name TEXT;
ALTER TABLE users ADD COLUMN plan VARCHAR(20) NOT NULL DEFAULT 'free';
CREATE INDEX users_plan_idx ON users (plan);
CREATE INDEX CONCURRENTLY users_created_idx ON users (created_at);
ALTER TABLE users ALTER COLUMN email TYPE VARCHAR(320);
ALTER TABLE users ALTER COLUMN age TYPE BIGINT;
ALTER TABLE users ALTER COLUMN legacy DROP NOT NULL;
DROP INDEX IF EXISTS users_old_idx;
INSERT INTO order_items (order_id, sku) VALUES (1, 'A-1');
