-- Version 1: the same tables as the SQLite store, plus execution leases,
-- which only a database shared by several hosts needs.

CREATE TABLE students (
	name       text PRIMARY KEY,
	uid        bigint NOT NULL UNIQUE,
	gid        bigint NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
);

-- uid_next only grows (see EnsureStudent), so a uid is never handed out
-- twice, on any host, even after its student is gone.
CREATE TABLE counters (
	name  text PRIMARY KEY,
	value bigint NOT NULL
);
INSERT INTO counters (name, value) VALUES ('uid_next', 0);

CREATE TABLE runs (
	id                text PRIMARY KEY,
	host              text NOT NULL,
	student           text NOT NULL,
	uid               bigint NOT NULL,
	gid               bigint NOT NULL,
	script            text NOT NULL,
	script_sha256     text NOT NULL,
	args              jsonb NOT NULL,
	mode              text NOT NULL,
	limits            jsonb NOT NULL,
	state             text NOT NULL,
	reason            text NOT NULL DEFAULT '',
	exit_code         integer,
	signal            text NOT NULL DEFAULT '',
	error             text NOT NULL DEFAULT '',
	started_at        timestamptz NOT NULL,
	ended_at          timestamptz,
	wall_ms           bigint NOT NULL DEFAULT 0,
	cpu_ms            bigint NOT NULL DEFAULT 0,
	peak_memory_bytes bigint NOT NULL DEFAULT 0,
	output_bytes      bigint NOT NULL DEFAULT 0,
	truncated         boolean NOT NULL DEFAULT false
);
CREATE INDEX runs_started ON runs (started_at);
CREATE INDEX runs_student_started ON runs (student, started_at);
CREATE INDEX runs_state_host ON runs (state, host);

-- Fencing tokens: every acquisition gets a new one, so a holder whose
-- lease expired and was taken over can never renew or delete the new
-- holder's row.
CREATE SEQUENCE lease_tokens;

-- One row per held execution lock. expires_at is compared with the
-- database's clock only, so the hosts' clocks need not agree.
CREATE TABLE leases (
	student     text NOT NULL,
	script      text NOT NULL,
	host        text NOT NULL,
	run_id      text NOT NULL,
	token       bigint NOT NULL,
	acquired_at timestamptz NOT NULL DEFAULT now(),
	expires_at  timestamptz NOT NULL,
	PRIMARY KEY (student, script)
);
CREATE INDEX leases_host ON leases (host);
