//! The database's schema and its migrations (`PRAGMA user_version` steps). An operator can open the
//! file with `sqlite3`; docs/STORAGE.md describes each table.

use rusqlite::Connection;

/// The schema this binary writes.
pub(crate) const VERSION: u32 = 8;

/// Each step takes the schema from the version before it to its own.
const STEPS: &[(u32, &str)] = &[
    (
        1,
        "
        CREATE TABLE rooms (
            id       INTEGER PRIMARY KEY,
            name     TEXT NOT NULL UNIQUE,   -- normalised room name
            epoch    TEXT NOT NULL,          -- changes only when the room's seq restarts
            last_seq INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE messages (
            id      INTEGER PRIMARY KEY,     -- the message id clients see (server-wide)
            room_id INTEGER NOT NULL REFERENCES rooms(id),
            seq     INTEGER NOT NULL,        -- per room, from 1
            ts      TEXT NOT NULL,           -- RFC 3339 UTC, milliseconds
            sender  TEXT NOT NULL,
            role    TEXT NOT NULL,           -- 'user' or 'admin'
            text    TEXT NOT NULL,
            action  INTEGER NOT NULL DEFAULT 0,
            UNIQUE (room_id, seq)
        );
        CREATE INDEX messages_ts ON messages (ts);
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        ",
    ),
    (
        2,
        "
        CREATE VIRTUAL TABLE messages_fts USING fts5 (
            text, content = 'messages', content_rowid = 'id', tokenize = 'unicode61',
            detail = 'none'  -- which messages hold a word, not where: a third of the index and its cost
        );
        -- Messages stored but not yet indexed: the writer indexes them between commits, so
        -- indexing never slows down storing (and a migrated database is indexed in the background).
        CREATE TABLE fts_pending (id INTEGER PRIMARY KEY);
        INSERT INTO fts_pending (id) SELECT id FROM messages;
        CREATE TRIGGER messages_fts_pending AFTER INSERT ON messages BEGIN
            INSERT INTO fts_pending (id) VALUES (new.id);
        END;
        CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, text)
                SELECT 'delete', old.id, old.text
                WHERE NOT EXISTS (SELECT 1 FROM fts_pending WHERE id = old.id);
            DELETE FROM fts_pending WHERE id = old.id;
        END;
        CREATE TABLE pms (
            id        INTEGER PRIMARY KEY,   -- the message id (shared with messages)
            pair      TEXT NOT NULL,         -- the two folded names, sorted, joined by a space
            ts        TEXT NOT NULL,
            sender    TEXT NOT NULL,
            recipient TEXT NOT NULL,
            role      TEXT NOT NULL,
            text      TEXT NOT NULL,
            action    INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX pms_pair ON pms (pair, id);
        CREATE INDEX pms_ts ON pms (ts);
        ",
    ),
    (
        3,
        "
        -- The file says it is chatd's (\"chat\"): chatd refuses a SQLite file with another id.
        PRAGMA application_id = 1667785076;
        -- A conversation's key is the two names' identity keys (lower case), no longer their
        -- look-alike folds, which made `ian` and `lan` one person.
        UPDATE pms SET pair = CASE
            WHEN lower(sender) <= lower(recipient) THEN lower(sender) || ' ' || lower(recipient)
            ELSE lower(recipient) || ' ' || lower(sender) END;
        ",
    ),
    (
        4,
        "
        -- Accounts (auth.mode = \"accounts\"): names owned by a password.
        CREATE TABLE accounts (
            key      TEXT PRIMARY KEY,       -- the name's identity key (lower case)
            name     TEXT NOT NULL,          -- as its owner spells it
            hash     TEXT NOT NULL,          -- Argon2id, PHC string; never the password
            role     TEXT NOT NULL DEFAULT 'user',
            disabled INTEGER NOT NULL DEFAULT 0,
            created  TEXT NOT NULL           -- RFC 3339 UTC
        );
        -- Invites registration may require: only a hash of each code is kept.
        CREATE TABLE invites (
            hash       TEXT PRIMARY KEY,     -- SHA-256 of the code, hex
            uses_left  INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL      -- Unix milliseconds
        );
        -- The rooms an account has joined and not left: kept across disconnects and restarts.
        CREATE TABLE memberships (
            account TEXT NOT NULL,           -- accounts.key
            room    TEXT NOT NULL,           -- normalised room name
            joined  TEXT NOT NULL,           -- RFC 3339 UTC
            read_seq INTEGER NOT NULL DEFAULT 0, -- the last seq the account has read (moves forward)
            PRIMARY KEY (account, room)
        ) WITHOUT ROWID;
        ",
    ),
    (
        5,
        "
        -- Read markers of private conversations (accounts, and tokens' subjects).
        CREATE TABLE pm_reads (
            account TEXT NOT NULL,           -- the reader's key
            other   TEXT NOT NULL,           -- the other's key
            read_id INTEGER NOT NULL,        -- the last message id read (moves forward)
            PRIMARY KEY (account, other)
        ) WITHOUT ROWID;
        -- A user's conversations, found by either side.
        CREATE INDEX pms_sender ON pms (lower(sender), id);
        CREATE INDEX pms_recipient ON pms (lower(recipient), id);
        -- What was kept before markers existed counts as read.
        INSERT INTO pm_reads (account, other, read_id)
            SELECT substr(pair, 1, instr(pair, ' ') - 1), substr(pair, instr(pair, ' ') + 1),
                   max(id)
            FROM pms GROUP BY pair;
        INSERT OR IGNORE INTO pm_reads (account, other, read_id)
            SELECT substr(pair, instr(pair, ' ') + 1), substr(pair, 1, instr(pair, ' ') - 1),
                   max(id)
            FROM pms GROUP BY pair;
        ",
    ),
    (
        6,
        "
        -- Rooms that belong to someone (tokens or accounts): settings, roles, invites.
        CREATE TABLE room_settings (
            room        TEXT PRIMARY KEY,        -- normalised room name
            owner       TEXT,                    -- the owner's key (NULL: ownerless)
            topic       TEXT NOT NULL DEFAULT '',
            private     INTEGER NOT NULL DEFAULT 0,  -- not listed for non-members
            invite_only INTEGER NOT NULL DEFAULT 0,
            moderated   INTEGER NOT NULL DEFAULT 0,  -- only ops and voice speak
            created     TEXT NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE room_roles (
            room    TEXT NOT NULL,
            account TEXT NOT NULL,               -- key
            role    TEXT NOT NULL,               -- 'op' or 'voice'
            PRIMARY KEY (room, account)
        ) WITHOUT ROWID;
        CREATE TABLE room_invites (
            room    TEXT NOT NULL,
            account TEXT NOT NULL,               -- key
            created TEXT NOT NULL,
            PRIMARY KEY (room, account)
        ) WITHOUT ROWID;
        -- Bans and mutes in a room; under the room '*', server-wide bans (accounts or address
        -- ranges) and revoked tokens ('jti:ID', 'sub:NAME').
        CREATE TABLE sanctions (
            room     TEXT NOT NULL,
            target   TEXT NOT NULL,
            kind     TEXT NOT NULL,              -- 'ban', 'mute' or 'revoke'
            by_name  TEXT NOT NULL,
            reason   TEXT NOT NULL,
            created  TEXT NOT NULL,
            until_ms INTEGER,                    -- Unix ms; NULL: forever
            PRIMARY KEY (room, target, kind)
        ) WITHOUT ROWID;
        -- Moderation actions, the newest 1000 per room.
        CREATE TABLE audit (
            id     INTEGER PRIMARY KEY,
            room   TEXT NOT NULL,
            actor  TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            reason TEXT NOT NULL,
            ts     TEXT NOT NULL
        );
        CREATE INDEX audit_room ON audit (room, id);
        -- Which rooms' policies changed, in order: nodes poll it to stay in step.
        CREATE TABLE policy_changes (
            version INTEGER PRIMARY KEY AUTOINCREMENT,
            room    TEXT NOT NULL
        );
        ",
    ),
    (
        7,
        "
        -- Messages that change: replies, edits, deletes, reactions. A change is a row of its
        -- own (numbered in the room like a message, so resuming clients get it), and the
        -- message it changes is kept in its current state.
        ALTER TABLE messages ADD COLUMN reply_to INTEGER;     -- the message (id) it answers
        ALTER TABLE messages ADD COLUMN edited_ts TEXT;       -- when it was last edited
        ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0; -- a tombstone (text '')
        ALTER TABLE messages ADD COLUMN kind TEXT;            -- a change: 'edit', 'delete', 'react'
        ALTER TABLE messages ADD COLUMN target INTEGER;       -- the message a change changes
        ALTER TABLE messages ADD COLUMN emoji TEXT;           -- a reaction's emoji
        ALTER TABLE messages ADD COLUMN added INTEGER;        -- a reaction added (1) or taken back (0)
        -- Private messages that change: edited, or deleted by their sender.
        ALTER TABLE pms ADD COLUMN edited_ts TEXT;
        ALTER TABLE pms ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
        -- Who reacted to what, now.
        CREATE TABLE reactions (
            msg     INTEGER NOT NULL,            -- messages.id
            emoji   TEXT NOT NULL,
            account TEXT NOT NULL,               -- the reactor's key
            name    TEXT NOT NULL,               -- as they spell it
            at      INTEGER NOT NULL,            -- the change's id (their order)
            PRIMARY KEY (msg, emoji, account)
        ) WITHOUT ROWID;
        -- Only messages' current text is indexed: never a change, never a deleted message.
        DROP TRIGGER messages_fts_delete;
        CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, text)
                SELECT 'delete', old.id, old.text
                WHERE old.kind IS NULL AND old.deleted = 0
                  AND NOT EXISTS (SELECT 1 FROM fts_pending WHERE id = old.id);
            DELETE FROM fts_pending WHERE id = old.id;
            DELETE FROM reactions WHERE msg = old.id;
        END;
        ",
    ),
    (
        8,
        "
        -- The HTTP API's keys: only a hash of each secret is kept.
        CREATE TABLE api_keys (
            id         TEXT PRIMARY KEY,             -- the key's public part (chatd_ID_...)
            name       TEXT NOT NULL UNIQUE,         -- what the operator called it
            account    TEXT NOT NULL,                -- the name it speaks as
            hash       TEXT NOT NULL,                -- SHA-256 of the whole key, hex
            scopes     TEXT NOT NULL,                -- comma-separated
            rooms      TEXT NOT NULL,                -- comma-separated; empty: every room
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER,                      -- NULL: never
            revoked    INTEGER NOT NULL DEFAULT 0
        );
        -- Idempotency keys of the API's POSTs, kept a few minutes: a retried request is
        -- answered with the first one's response instead of being done twice.
        CREATE TABLE api_requests (
            key_id      TEXT NOT NULL,
            idem        TEXT NOT NULL,
            fingerprint TEXT NOT NULL,               -- SHA-256 of method, path and body
            created_ms  INTEGER NOT NULL,
            status      INTEGER,                     -- NULL while the first is in progress
            response    TEXT,
            PRIMARY KEY (key_id, idem)
        ) WITHOUT ROWID;
        CREATE INDEX api_requests_created ON api_requests (created_ms);
        ",
    ),
];

/// Why the database cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchemaError {
    /// Written by a newer chatd.
    #[error(
        "the database has schema version {found}, newer than this chatd knows ({VERSION}); run a newer chatd, or move the file away"
    )]
    Newer { found: u32 },
    /// SQLite refused.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Brings the schema to `target` (tests migrate to older versions).
pub(crate) fn migrate_to(db: &mut Connection, target: u32) -> Result<u32, SchemaError> {
    let found: u32 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > VERSION {
        return Err(SchemaError::Newer { found });
    }

    for (version, sql) in STEPS {
        if *version <= found || *version > target {
            continue;
        }
        let tx = db.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(found)
}
