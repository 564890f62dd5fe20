//! Read-your-writes through a follower (or the router).
//!
//! Start a cluster (`replidb playground`), then:
//!
//! ```text
//! cargo run -p replidb-client --example read_your_writes -- http://127.0.0.1:7001
//! ```
//!
//! A plain eventual read from a lagging follower may miss the write just
//! made; the session's read cannot, because it presents the write's LSN as
//! `min_lsn`.

use replidb_client::{Client, Consistency, ReadOptions, Session, WriteOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:7001".to_string());
    let session = Session::new(Client::new(&url)?);
    let eventual = ReadOptions::with(Consistency::Eventual);

    for i in 0..5 {
        let value = format!("v{i}");
        // The follower redirects the write to the leader; the client follows.
        let w = session
            .put("demo", value.clone(), &WriteOptions::default())
            .await?;

        let plain = session.client().get("demo", &eventual).await?;
        let mine = session.get("demo", &eventual).await?;
        println!(
            "wrote {value} at lsn {}: plain read saw {:?} (node lsn {:?}), session read saw {:?}",
            w.lsn,
            plain.as_ref().and_then(|r| r.as_str().map(String::from)),
            plain.as_ref().and_then(|r| r.applied_lsn),
            mine.as_ref().and_then(|r| r.as_str().map(String::from)),
        );
    }
    println!("session token: {}", session.token());
    Ok(())
}
