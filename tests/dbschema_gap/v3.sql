ALTER TABLE notes ADD COLUMN author TEXT NOT NULL DEFAULT '';
CREATE INDEX notes_author ON notes (author);
