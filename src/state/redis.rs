//! The state stores' corner of Redis. Their connections, retries and errors are the process's
//! one Redis layer, [`crate::redisdb`]; what is theirs is the key prefix.

/// Key prefix of everything the state stores keep in Redis.
pub const PREFIX: &str = "memex:st:";
