# MySQL migration: unsafe while the old version runs.
-- ALTER TABLE `order` DROP COLUMN `desc`;
ALTER TABLE `order` CHANGE COLUMN `desc` description VARCHAR(255);
ALTER TABLE `order`
  MODIFY COLUMN note VARCHAR(50) NOT NULL;
ALTER TABLE `order` ADD COLUMN region VARCHAR(8) NOT NULL;
ALTER TABLE `order` ADD UNIQUE KEY uk_ref (ref);
ALTER TABLE customers DROP amount, DROP COLUMN `rank`;
ALTER TABLE customers MODIFY score INT UNSIGNED NOT NULL DEFAULT 0;
DROP TABLE IF EXISTS legacy_carts;
RENAME TABLE `order` TO orders;
