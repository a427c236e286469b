-- Nothing to do in this release.
/* DROP TABLE users; */
