-- Expand step (SQLite): safe while the old version runs.
-- DROP TABLE customers;
CREATE TABLE tags (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  name TEXT NOT NULL
);
CREATE UNIQUE INDEX tags_name ON tags (name);
ALTER TABLE customers ADD COLUMN phone TEXT;
ALTER TABLE customers ADD COLUMN tier TEXT NOT NULL DEFAULT 'basic';
CREATE INDEX customers_tier ON customers (tier);
