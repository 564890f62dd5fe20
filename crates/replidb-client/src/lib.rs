//! replidb-client
