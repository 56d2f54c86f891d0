-- Majordomo schema. Idempotent: applying it again changes nothing; `majordomo db migrate`
-- and `majordomo serve` (unless storage.auto_migrate is false) apply it under an advisory
-- lock, so replicas starting together do not race. Runs on PostgreSQL 14 and newer.
--
-- Changing it: never rename or drop a column (the names are a contract). Add columns with
-- ALTER TABLE ... ADD COLUMN IF NOT EXISTS at the end of this file and bump the version
-- recorded in the last statement (and SCHEMA_VERSION in db/__init__.py).

CREATE TABLE IF NOT EXISTS majordomo_schema (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS api_keys (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key_hash       text NOT NULL UNIQUE,          -- SHA-256 hex of the plaintext key
    name           text NOT NULL,
    description    text,
    is_active      boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    last_used_at   timestamptz,
    request_count  bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS llm_requests (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    majordomo_api_key_id    uuid REFERENCES api_keys (id),
    provider_api_key_hash   text,
    provider_api_key_alias  text,
    provider                text NOT NULL,
    model                   text NOT NULL,
    request_path            text NOT NULL,
    request_method          text NOT NULL,
    requested_at            timestamptz NOT NULL,
    responded_at            timestamptz NOT NULL,
    response_time_ms        integer NOT NULL DEFAULT 0,
    input_tokens            bigint NOT NULL DEFAULT 0,
    output_tokens           bigint NOT NULL DEFAULT 0,
    cached_tokens           bigint NOT NULL DEFAULT 0,
    cache_creation_tokens   bigint NOT NULL DEFAULT 0,
    input_cost              numeric NOT NULL DEFAULT 0,
    output_cost             numeric NOT NULL DEFAULT 0,
    total_cost              numeric NOT NULL DEFAULT 0,
    status_code             integer NOT NULL,
    error_message           text,
    raw_metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    indexed_metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    request_body            text,
    response_body           text,
    body_s3_key             text,
    model_alias_found       boolean NOT NULL DEFAULT false,
    created_at              timestamptz NOT NULL DEFAULT now(),
    -- Additions to the reference's columns.
    reasoning_tokens        bigint NOT NULL DEFAULT 0,
    streamed                boolean NOT NULL DEFAULT false,
    time_to_first_byte_ms   integer
);

CREATE INDEX IF NOT EXISTS llm_requests_requested_at_idx ON llm_requests (requested_at);
CREATE INDEX IF NOT EXISTS llm_requests_key_requested_at_idx
    ON llm_requests (majordomo_api_key_id, requested_at);
CREATE INDEX IF NOT EXISTS llm_requests_indexed_metadata_idx
    ON llm_requests USING gin (indexed_metadata jsonb_path_ops);

CREATE TABLE IF NOT EXISTS llm_requests_metadata_keys (
    majordomo_api_key_id  uuid NOT NULL REFERENCES api_keys (id),
    key_name              text NOT NULL,
    display_name          text,
    key_type              text NOT NULL DEFAULT 'string',
    is_active             boolean NOT NULL DEFAULT false,
    activated_at          timestamptz,
    request_count         bigint NOT NULL DEFAULT 0,
    last_seen_at          timestamptz,
    approx_cardinality    bigint NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (majordomo_api_key_id, key_name)
);

INSERT INTO majordomo_schema (version) VALUES (1) ON CONFLICT (version) DO NOTHING;

-- Version 2: a HyperLogLog sketch per metadata key, so approx_cardinality is exact to a few
-- percent whatever the number of gateways writing, and survives restarts. 256 one-byte
-- registers; merging is a register-wise max, so writers can merge in any order, twice even.
ALTER TABLE llm_requests_metadata_keys ADD COLUMN IF NOT EXISTS approx_hll bytea;

CREATE OR REPLACE FUNCTION majordomo_hll_merge(a bytea, b bytea) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    merged bytea := a;
BEGIN
    IF a IS NULL OR length(a) <> length(b) THEN
        RETURN b;
    END IF;
    IF b IS NULL THEN
        RETURN a;
    END IF;
    FOR i IN 0 .. length(b) - 1 LOOP
        IF get_byte(b, i) > get_byte(merged, i) THEN
            merged := set_byte(merged, i, get_byte(b, i));
        END IF;
    END LOOP;
    RETURN merged;
END
$$;

CREATE OR REPLACE FUNCTION majordomo_hll_estimate(h bytea) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    m double precision;
    total double precision := 0;
    zeros integer := 0;
    estimate double precision;
BEGIN
    IF h IS NULL OR length(h) = 0 THEN
        RETURN 0;
    END IF;
    m := length(h);
    FOR i IN 0 .. length(h) - 1 LOOP
        total := total + power(2.0, -get_byte(h, i));
        IF get_byte(h, i) = 0 THEN
            zeros := zeros + 1;
        END IF;
    END LOOP;
    estimate := (0.7213 / (1 + 1.079 / m)) * m * m / total;
    IF estimate <= 2.5 * m AND zeros > 0 THEN
        estimate := m * ln(m / zeros);  -- linear counting is better for small sets
    END IF;
    RETURN round(estimate);
END
$$;

INSERT INTO majordomo_schema (version) VALUES (2) ON CONFLICT (version) DO NOTHING;

-- Version 3: costs at full precision (numeric without a scale). Relaxing a numeric's
-- typmod rewrites nothing, but takes a lock: only done where the scale is still set.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = 'llm_requests'
           AND column_name IN ('input_cost', 'output_cost', 'total_cost')
           AND numeric_scale IS NOT NULL
    ) THEN
        ALTER TABLE llm_requests
            ALTER COLUMN input_cost TYPE numeric,
            ALTER COLUMN output_cost TYPE numeric,
            ALTER COLUMN total_cost TYPE numeric;
    END IF;
END
$$;

INSERT INTO majordomo_schema (version) VALUES (3) ON CONFLICT (version) DO NOTHING;

-- Version 4: why a row's usage could not be read (a stream event over
-- providers.max_event_size, a body that does not decompress); NULL when it was.
ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS usage_error text;

INSERT INTO majordomo_schema (version) VALUES (4) ON CONFLICT (version) DO NOTHING;

-- Version 5: provider credentials held by the gateway (the Go gateway's proxy keys, plus
-- credentials held for a Majordomo key itself). Credentials are sealed (AES-256-GCM, see
-- vault.py): `encrypted_key` never holds a plaintext; `key_hint` is what listings show.
CREATE TABLE IF NOT EXISTS proxy_keys (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    key_hash              varchar(64) NOT NULL UNIQUE,   -- SHA-256 hex of the plaintext key
    name                  text NOT NULL,
    description           text,
    majordomo_api_key_id  uuid NOT NULL REFERENCES api_keys (id),
    is_active             boolean NOT NULL DEFAULT true,
    created_at            timestamptz NOT NULL DEFAULT now(),
    revoked_at            timestamptz,
    last_used_at          timestamptz,
    request_count         bigint NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS proxy_keys_majordomo_api_key_id_idx
    ON proxy_keys (majordomo_api_key_id);

CREATE TABLE IF NOT EXISTS proxy_key_provider_mappings (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    proxy_key_id   uuid NOT NULL REFERENCES proxy_keys (id) ON DELETE CASCADE,
    provider       text NOT NULL,
    encrypted_key  text NOT NULL,
    key_hint       text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (proxy_key_id, provider)
);

CREATE TABLE IF NOT EXISTS api_key_provider_mappings (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    api_key_id     uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    provider       text NOT NULL,
    encrypted_key  text NOT NULL,
    key_hint       text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (api_key_id, provider)
);

ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS proxy_key_id uuid REFERENCES proxy_keys (id);

INSERT INTO majordomo_schema (version) VALUES (5) ON CONFLICT (version) DO NOTHING;

-- Version 6: users (the Go gateway's columns plus role and last_login_at), the owner of a key
-- and of each request, and the admin API's audit trail.
CREATE TABLE IF NOT EXISTS users (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username       text NOT NULL UNIQUE,
    password_hash  text NOT NULL,               -- argon2id (bcrypt accepted from the Go gateway)
    is_active      boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    role           text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    last_login_at  timestamptz
);

ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS user_id uuid REFERENCES users (id);
CREATE INDEX IF NOT EXISTS api_keys_user_id_idx ON api_keys (user_id);
ALTER TABLE llm_requests ADD COLUMN IF NOT EXISTS user_id uuid REFERENCES users (id);
CREATE INDEX IF NOT EXISTS llm_requests_user_id_requested_at_idx
    ON llm_requests (user_id, requested_at DESC);

CREATE TABLE IF NOT EXISTS admin_audit (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT now(),
    actor_user_id   uuid REFERENCES users (id),
    actor           text NOT NULL,              -- a username, or 'cli' for the command line
    action          text NOT NULL,              -- e.g. api_key.create, user.disable
    target_type     text,
    target_id       text,
    details         jsonb NOT NULL DEFAULT '{}'::jsonb,
    client_address  text
);
CREATE INDEX IF NOT EXISTS admin_audit_at_idx ON admin_audit (at DESC);

INSERT INTO majordomo_schema (version) VALUES (6) ON CONFLICT (version) DO NOTHING;

-- Version 7: budgets and rate limits per key (limits.py). Each key's limits, and the shared
-- state of each (key, kind, window): its capacity and what gateways have leased of it.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS budget_usd numeric CHECK (budget_usd >= 0);
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS budget_period text
    CHECK (budget_period IN ('day', 'month'));
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS rpm integer CHECK (rpm > 0);
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS tpm integer CHECK (tpm > 0);
ALTER TABLE proxy_keys ADD COLUMN IF NOT EXISTS budget_usd numeric CHECK (budget_usd >= 0);
ALTER TABLE proxy_keys ADD COLUMN IF NOT EXISTS budget_period text
    CHECK (budget_period IN ('day', 'month'));
ALTER TABLE proxy_keys ADD COLUMN IF NOT EXISTS rpm integer CHECK (rpm > 0);
ALTER TABLE proxy_keys ADD COLUMN IF NOT EXISTS tpm integer CHECK (tpm > 0);

CREATE TABLE IF NOT EXISTS limit_windows (
    owner_id      uuid NOT NULL,               -- the key (or proxy key) the limit is on
    kind          text NOT NULL CHECK (kind IN ('requests', 'tokens', 'usd')),
    window_start  timestamptz NOT NULL,
    capacity      numeric NOT NULL,
    granted       numeric NOT NULL DEFAULT 0,  -- leased to gateways, less what they gave back
    PRIMARY KEY (owner_id, kind, window_start)
);

INSERT INTO majordomo_schema (version) VALUES (7) ON CONFLICT (version) DO NOTHING;
