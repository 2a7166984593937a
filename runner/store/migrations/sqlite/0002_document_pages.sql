-- A revision's document list as pages shared between revisions: each (kind, name) belongs to
-- one page by a hash of the pair, and a page (a JSON array of [kind, name, digest, path],
-- sorted) is stored once under the digest of its text. A new revision lists its pages' digests:
-- a one-file change writes one page and one revision row, whatever the number of documents.
-- Revisions applied before this migration keep their rows in `documents` (pages stays NULL).

CREATE TABLE document_pages (
    digest TEXT PRIMARY KEY,
    entries TEXT NOT NULL
);

ALTER TABLE revisions ADD COLUMN pages TEXT;

ALTER TABLE revisions ADD COLUMN document_count INTEGER;
