//! State shared by the workers of a host, in memory-mapped tables under the data dir that survive restarts: the
//! generic table (`table`), the dedup window and its ids (`dedup`), devices' last-seen times (`lastseen`).

pub mod dedup;
pub mod lastseen;
pub mod table;
