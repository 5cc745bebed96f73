//! The operation log's table.

diesel::table! {
    /// One row per committed operation.
    ofx_operations (idx) {
        /// The readers' cursor: grows with every insert, never reused.
        idx -> BigInt,
        /// The operation's uuid (unique).
        uuid -> Text,
        /// The host that executed it.
        host_id -> Text,
        /// When it started, in microseconds since the Unix epoch.
        logged_at -> BigInt,
        /// When it was committed, in microseconds since the Unix epoch.
        committed_at -> BigInt,
        /// The command's name.
        command_name -> Text,
        /// The command, as JSON.
        command_json -> Text,
        /// Its operation items, as a JSON object.
        items_json -> Text,
        /// Its nested operations, as a JSON array.
        nested_json -> Text,
        /// PostgreSQL: the id of the transaction that wrote the row (`pg_current_xact_id()`,
        /// taken before `idx` was drawn). NULL on SQLite and for rows written without it.
        xid -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// How far the trimmer has deleted (one row).
    ofx_log_trims (id) {
        /// Always 1.
        id -> Integer,
        /// Every row with an index up to this one may have been deleted.
        trimmed_through -> BigInt,
    }
}

diesel::table! {
    /// Events with guaranteed delivery (see [`EventProcessor`](crate::EventProcessor)).
    ofx_events (uuid) {
        /// The event's uuid: new, or derived from its key.
        uuid -> Text,
        /// The operation that produced it (the last one, for a replaced event).
        operation_uuid -> Text,
        /// The host that produced it.
        host_id -> Text,
        /// The event's command name.
        command_name -> Text,
        /// The command, as JSON.
        command_json -> Text,
        /// Its deduplication key.
        event_key -> Nullable<Text>,
        /// When it was produced (µs since the epoch).
        logged_at -> BigInt,
        /// When it may run (µs since the epoch).
        due_at -> BigInt,
        /// 0 pending, 1 done, 2 dead.
        state -> Integer,
        /// Claims so far.
        attempts -> Integer,
        /// The fencing number: incremented by every claim.
        lease_token -> BigInt,
        /// The host holding the lease.
        lease_owner -> Nullable<Text>,
        /// When the lease ends (µs since the epoch).
        lease_until -> Nullable<BigInt>,
        /// The last failure.
        last_error -> Nullable<Text>,
        /// When it was done or declared dead (µs since the epoch).
        finished_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    /// The state service's event streams (see `state`).
    ofx_stream_events (stream, position) {
        /// The stream's name.
        stream -> Text,
        /// The event's position in its stream, dense from 1.
        position -> BigInt,
        /// The event, as JSON.
        body -> Text,
        /// The operation that appended it.
        operation_uuid -> Text,
        /// When it was appended (µs since the epoch).
        appended_at -> BigInt,
    }
}

diesel::table! {
    /// Snapshots of projected states.
    ofx_state_snapshots (projection, version) {
        /// The projection's name.
        projection -> Text,
        /// The projection's version.
        version -> BigInt,
        /// The stream position the state reflects.
        position -> BigInt,
        /// When it was saved (µs since the epoch).
        saved_at -> BigInt,
        /// The encoded snapshot (header and state).
        body -> Binary,
    }
}

diesel::table! {
    /// Stream events a projection could not apply.
    ofx_state_quarantine (projection, version, stream, position) {
        /// The projection's name.
        projection -> Text,
        /// The projection's version.
        version -> BigInt,
        /// The stream.
        stream -> Text,
        /// The event's position.
        position -> BigInt,
        /// `undecodable`, `rejected`, `panicked` or `missing`.
        kind -> Text,
        /// Why it was set aside.
        reason -> Text,
        /// When (µs since the epoch).
        quarantined_at -> BigInt,
    }
}

diesel::table! {
    /// The entries of transactional maps (see `maps`).
    ofx_map_entries (map, key) {
        /// The map's name.
        map -> Text,
        /// The key, as JSON.
        key -> Text,
        /// The value, as JSON.
        value -> Text,
    }
}

diesel::table! {
    /// One row per host that reads the log, written by its heartbeat (see `hosts`).
    ofx_hosts (host_id) {
        /// The host's id (`HostId`).
        host_id -> Text,
        /// The machine's name.
        host_name -> Text,
        /// The process id.
        pid -> BigInt,
        /// When the heartbeat started (µs since the epoch, the host's clock).
        started_at -> BigInt,
        /// The last heartbeat (µs since the epoch, the host's clock).
        heartbeat_at -> BigInt,
        /// How often the host beats (µs).
        heartbeat_period -> BigInt,
        /// When the host stopped cleanly (µs since the epoch).
        stopped_at -> Nullable<BigInt>,
        /// The last index its reader read (-1 before the first read).
        read_cursor -> BigInt,
        /// Every operation up to this index is replayed there (NULL: unknown).
        replayed_through -> Nullable<BigInt>,
        /// Operations replayed.
        replayed -> BigInt,
    }
}
