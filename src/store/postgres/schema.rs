//! The PostgreSQL schema and its migrations: numbered steps, the version in `chatd_schema`, each
//! step in a transaction under an advisory lock (two nodes starting at once migrate once).
//! docs/STORAGE.md describes each table.

use postgres::Client;

/// The schema this binary writes.
pub(super) const VERSION: i32 = 6;

/// The advisory lock migrations hold (a transaction's).
const MIGRATION_LOCK: i64 = 0x6368_6174_0001;

/// Each step takes the schema from the version before it to its own.
const STEPS: &[(i32, &str)] = &[
    (
        1,
        "
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE rooms (
        id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name     TEXT NOT NULL UNIQUE,   -- normalised room name
        epoch    TEXT NOT NULL,          -- changes only when the room's seq restarts
        last_seq BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE messages (
        id      BIGINT PRIMARY KEY,      -- the message id clients see (server- or cluster-wide)
        room_id BIGINT NOT NULL REFERENCES rooms(id),
        seq     BIGINT NOT NULL,         -- per room, from 1
        ts      TEXT NOT NULL,           -- RFC 3339 UTC, milliseconds
        sender  TEXT NOT NULL,
        role    TEXT NOT NULL,           -- 'user' or 'admin'
        text    TEXT NOT NULL,
        action  BOOLEAN NOT NULL DEFAULT false,
        UNIQUE (room_id, seq)
    );
    CREATE INDEX messages_ts ON messages (ts);
    -- Search: each message's words, GIN-indexed. Filled by the writers between commits, from
    -- words_pending (a commit only notes what is new), so indexing, four times the cost of
    -- storing, never slows storing down. Both are keyed by messages.id without a foreign key
    -- (a check per row on the hot path): the pruner deletes from all three together.
    CREATE TABLE message_words (
        id    BIGINT PRIMARY KEY,
        words TSVECTOR NOT NULL
    );
    CREATE INDEX message_words_words ON message_words USING GIN (words);
    CREATE TABLE words_pending (
        id BIGINT PRIMARY KEY
    );
    CREATE TABLE pms (
        id        BIGINT PRIMARY KEY,    -- the message id (shared with messages)
        pair      TEXT NOT NULL,         -- the two names' identity keys, sorted, joined by a space
        ts        TEXT NOT NULL,
        sender    TEXT NOT NULL,
        recipient TEXT NOT NULL,
        role      TEXT NOT NULL,
        text      TEXT NOT NULL,
        action    BOOLEAN NOT NULL DEFAULT false
    );
    CREATE INDEX pms_pair ON pms (pair, id);
    CREATE INDEX pms_ts ON pms (ts);
    ",
    ),
    (
        2,
        "
    -- Accounts (auth.mode = 'accounts'): names owned by a password.
    CREATE TABLE accounts (
        key      TEXT PRIMARY KEY,       -- the name's identity key (lower case)
        name     TEXT NOT NULL,          -- as its owner spells it
        hash     TEXT NOT NULL,          -- Argon2id, PHC string; never the password
        role     TEXT NOT NULL DEFAULT 'user',
        disabled BOOLEAN NOT NULL DEFAULT false,
        created  TEXT NOT NULL           -- RFC 3339 UTC
    );
    -- Invites registration may require: only a hash of each code is kept.
    CREATE TABLE invites (
        hash       TEXT PRIMARY KEY,     -- SHA-256 of the code, hex
        uses_left  INTEGER NOT NULL,
        expires_ms BIGINT NOT NULL       -- Unix milliseconds
    );
    -- The rooms an account has joined and not left: kept across disconnects and restarts.
    CREATE TABLE memberships (
        account TEXT NOT NULL,           -- accounts.key
        room    TEXT NOT NULL,           -- normalised room name
        joined  TEXT NOT NULL,           -- RFC 3339 UTC
        read_seq BIGINT NOT NULL DEFAULT 0, -- the last seq the account has read (moves forward)
        PRIMARY KEY (account, room)
    );
    ",
    ),
    (
        3,
        "
    -- Read markers of private conversations (accounts, and tokens' subjects).
    CREATE TABLE pm_reads (
        account TEXT NOT NULL,           -- the reader's key
        other   TEXT NOT NULL,           -- the other's key
        read_id BIGINT NOT NULL,         -- the last message id read (moves forward)
        PRIMARY KEY (account, other)
    );
    -- A user's conversations, found by either side.
    CREATE INDEX pms_sender ON pms (lower(sender), id);
    CREATE INDEX pms_recipient ON pms (lower(recipient), id);
    -- What was kept before markers existed counts as read.
    INSERT INTO pm_reads (account, other, read_id)
        SELECT split_part(pair, ' ', 1), split_part(pair, ' ', 2), max(id) FROM pms GROUP BY pair
    ON CONFLICT DO NOTHING;
    INSERT INTO pm_reads (account, other, read_id)
        SELECT split_part(pair, ' ', 2), split_part(pair, ' ', 1), max(id) FROM pms GROUP BY pair
    ON CONFLICT DO NOTHING;
    ",
    ),
    (
        4,
        "
    -- Rooms that belong to someone (tokens or accounts): settings, roles, invites.
    CREATE TABLE room_settings (
        room        TEXT PRIMARY KEY,
        owner       TEXT,                    -- the owner's key (NULL: ownerless)
        topic       TEXT NOT NULL DEFAULT '',
        private     BOOLEAN NOT NULL DEFAULT false,
        invite_only BOOLEAN NOT NULL DEFAULT false,
        moderated   BOOLEAN NOT NULL DEFAULT false,
        created     TEXT NOT NULL
    );
    CREATE TABLE room_roles (
        room    TEXT NOT NULL,
        account TEXT NOT NULL,
        role    TEXT NOT NULL,               -- 'op' or 'voice'
        PRIMARY KEY (room, account)
    );
    CREATE TABLE room_invites (
        room    TEXT NOT NULL,
        account TEXT NOT NULL,
        created TEXT NOT NULL,
        PRIMARY KEY (room, account)
    );
    -- Bans and mutes; under the room '*', server-wide bans and revoked tokens.
    CREATE TABLE sanctions (
        room     TEXT NOT NULL,
        target   TEXT NOT NULL,
        kind     TEXT NOT NULL,              -- 'ban', 'mute' or 'revoke'
        by_name  TEXT NOT NULL,
        reason   TEXT NOT NULL,
        created  TEXT NOT NULL,
        until_ms BIGINT,                     -- Unix ms; NULL: forever
        PRIMARY KEY (room, target, kind)
    );
    CREATE TABLE audit (
        id     BIGSERIAL PRIMARY KEY,
        room   TEXT NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        reason TEXT NOT NULL,
        ts     TEXT NOT NULL
    );
    CREATE INDEX audit_room ON audit (room, id);
    CREATE TABLE policy_changes (
        version BIGSERIAL PRIMARY KEY,
        room    TEXT NOT NULL
    );
    ",
    ),
    (
        5,
        "
    -- Messages that change (see SQLite's schema 7): a change is a row of its own, numbered in
    -- the room; the message it changes is kept in its current state.
    ALTER TABLE messages ADD COLUMN reply_to BIGINT;
    ALTER TABLE messages ADD COLUMN edited_ts TEXT;
    ALTER TABLE messages ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT false;
    ALTER TABLE messages ADD COLUMN kind TEXT;          -- 'edit', 'delete', 'react' (NULL: a message)
    ALTER TABLE messages ADD COLUMN target BIGINT;
    ALTER TABLE messages ADD COLUMN emoji TEXT;
    ALTER TABLE messages ADD COLUMN added BOOLEAN;
    ALTER TABLE pms ADD COLUMN edited_ts TEXT;
    ALTER TABLE pms ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT false;
    CREATE TABLE reactions (
        msg     BIGINT NOT NULL,
        emoji   TEXT NOT NULL,
        account TEXT NOT NULL,
        name    TEXT NOT NULL,
        at      BIGINT NOT NULL,
        PRIMARY KEY (msg, emoji, account)
    );
    ",
    ),
    (
        6,
        "
    -- The HTTP API's keys (a hash of each) and its idempotency keys (see SQLite's schema 8).
    CREATE TABLE api_keys (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        account    TEXT NOT NULL,
        hash       TEXT NOT NULL,
        scopes     TEXT NOT NULL,
        rooms      TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT,
        revoked    BOOLEAN NOT NULL DEFAULT false
    );
    CREATE TABLE api_requests (
        key_id      TEXT NOT NULL,
        idem        TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        created_ms  BIGINT NOT NULL,
        status      INTEGER,
        response    TEXT,
        PRIMARY KEY (key_id, idem)
    );
    CREATE INDEX api_requests_created ON api_requests (created_ms);
    ",
    ),
];

/// Why the database cannot be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum SchemaError {
    /// Written by a newer chatd.
    #[error(
        "the database has chatd schema version {found}, newer than this chatd knows ({VERSION}); run a newer chatd"
    )]
    Newer { found: i32 },
    /// Tables of another program, and no chatd schema.
    #[error(
        "not a chatd database: it holds another program's tables ({0}); give chatd a database of its own"
    )]
    Foreign(String),
    /// PostgreSQL refused.
    #[error("{0}")]
    Postgres(#[from] postgres::Error),
}

/// The schema version the database has (0: none yet), refusing one that belongs to another
/// program. Reads only.
pub(super) fn version(db: &mut impl postgres::GenericClient) -> Result<i32, SchemaError> {
    let tables: Vec<String> = db
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()
             ORDER BY tablename",
            &[],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if tables.iter().any(|t| t == "chatd_schema") {
        let found: Option<i32> = db
            .query_opt("SELECT max(version) FROM chatd_schema", &[])?
            .and_then(|r| r.get(0));
        return Ok(found.unwrap_or(0));
    }
    if tables.is_empty() {
        return Ok(0);
    }
    let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
    Err(SchemaError::Foreign(shown.join(", ")))
}

/// Brings the schema to [`VERSION`]; the version found.
pub(super) fn migrate(db: &mut Client) -> Result<i32, SchemaError> {
    let mut tx = db.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    let found = version(&mut tx)?;
    if found > VERSION {
        return Err(SchemaError::Newer { found });
    }
    if found == 0 {
        tx.batch_execute("CREATE TABLE chatd_schema (version INTEGER NOT NULL)")?;
    }
    for (version, sql) in STEPS {
        if *version <= found {
            continue;
        }
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO chatd_schema (version) VALUES ($1)", &[version])?;
    }
    tx.commit()?;
    Ok(found)
}
