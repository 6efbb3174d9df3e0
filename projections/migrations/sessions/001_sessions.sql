-- The sessions read model. Run with search_path set to the model's schema (sessions.py), so
-- the same file builds the live schema and a replay's shadow. Every projected value comes
-- from the log: no column defaults to the clock.

CREATE TABLE checkpoint (
    stream_key text PRIMARY KEY,  -- a stream's Redis key, partition included
    position text NOT NULL        -- the last entry id applied
);

CREATE TABLE projection_errors (
    stream_key text NOT NULL,
    entry_id text NOT NULL,
    reason text NOT NULL,
    PRIMARY KEY (stream_key, entry_id)
);

CREATE TABLE sessions (
    session_id text PRIMARY KEY,
    wa_id text NOT NULL DEFAULT '',
    customer text NOT NULL DEFAULT '',         -- the conversation's customer key
    phone_number_id text NOT NULL DEFAULT '',
    status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'handoff', 'closed')),
    started_at timestamptz,                    -- its first inbound message (WhatsApp time)
    last_message_at timestamptz,               -- its last inbound message (WhatsApp time)
    turn_count integer NOT NULL DEFAULT 0
);
CREATE INDEX sessions_conversation ON sessions (phone_number_id, customer);

CREATE TABLE messages (
    message_id text PRIMARY KEY,               -- the wamid
    session_id text NOT NULL,
    direction text NOT NULL CHECK (direction IN ('in', 'out')),
    type text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL,
    status text NOT NULL,
    turn_id text,
    reply_id text                              -- outbound: the reply it is (a part of)
);
CREATE INDEX messages_session ON messages (session_id, direction, created_at);
CREATE INDEX messages_reply ON messages (reply_id) WHERE reply_id IS NOT NULL;

-- Every status an outbound message reached, kept as a set: messages.status is derived from
-- it, so the order statuses arrive in does not matter.
CREATE TABLE message_statuses (
    message_id text NOT NULL,
    status text NOT NULL,
    at timestamptz NOT NULL,
    PRIMARY KEY (message_id, status)
);

-- Which turn took an inbound message (turn.ready may be read before the message itself).
CREATE TABLE turn_messages (
    message_id text PRIMARY KEY,
    session_id text NOT NULL,
    turn_id text NOT NULL
);

CREATE TABLE turns (
    session_id text NOT NULL,
    turn_id text NOT NULL,
    message_count integer,                     -- NULL until its turn.ready is applied
    ready_at timestamptz,
    outcome text,                              -- the furthest outcome of its replies
    replied_at timestamptz,
    PRIMARY KEY (session_id, turn_id)
);

CREATE TABLE replies (
    reply_id text PRIMARY KEY,
    session_id text NOT NULL,
    turn_id text NOT NULL,
    body text,                                 -- NULL until its reply.generated is applied
    tokens integer,
    generated_at timestamptz,
    outcome text NOT NULL
        CHECK (outcome IN ('generated', 'superseded', 'blocked', 'failed', 'sent')),
    outcome_at timestamptz,
    code integer,
    reason text NOT NULL DEFAULT ''
);
CREATE INDEX replies_turn ON replies (session_id, turn_id);

CREATE TABLE handoffs (
    session_id text NOT NULL,
    entry_id text NOT NULL,
    type text NOT NULL CHECK (type IN ('requested', 'released')),
    turn_id text NOT NULL,
    at timestamptz NOT NULL,                   -- the entry's time in the log
    PRIMARY KEY (session_id, entry_id)
);
