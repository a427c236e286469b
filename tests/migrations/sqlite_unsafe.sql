-- SQLite migration: unsafe while the old version runs.
ALTER TABLE "order" RENAME COLUMN qty TO quantity;
ALTER TABLE customers RENAME TO clients;
ALTER TABLE notes RENAME body TO content;
/* ALTER TABLE clients DROP COLUMN email; */
ALTER TABLE clients DROP COLUMN fax;
ALTER TABLE clients ADD COLUMN code TEXT NOT NULL;
CREATE UNIQUE INDEX clients_email ON clients (email);
DROP TABLE tmp_import;
