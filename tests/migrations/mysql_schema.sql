-- Current production schema (MySQL).
CREATE TABLE `order` (
  id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  `desc` VARCHAR(255),
  note VARCHAR(255) NULL,
  ref VARCHAR(32) NOT NULL,
  title VARCHAR(100) NOT NULL
);
CREATE TABLE customers (
  id INT NOT NULL PRIMARY KEY,
  amount DECIMAL(10, 2),
  `rank` INT,
  score INT NOT NULL DEFAULT 0
);
CREATE TABLE legacy_carts (id INT);
