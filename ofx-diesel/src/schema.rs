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
