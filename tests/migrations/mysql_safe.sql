# Expand step (MySQL): safe while the old version runs.
/* ALTER TABLE `order` DROP COLUMN note; -- later */
CREATE TABLE shipments (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  order_id BIGINT NOT NULL,
  carrier VARCHAR(32) NOT NULL
);
CREATE UNIQUE INDEX shipments_order ON shipments (order_id);
ALTER TABLE `order` ADD COLUMN coupon VARCHAR(32) NULL;
ALTER TABLE `order` ADD COLUMN is_gift TINYINT(1) NOT NULL DEFAULT 0;
CREATE INDEX order_ref_idx ON `order` (ref);
ALTER TABLE `order` MODIFY title VARCHAR(255) NOT NULL;
ALTER TABLE customers MODIFY score BIGINT NOT NULL DEFAULT 0;
