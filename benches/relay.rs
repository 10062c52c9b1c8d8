//! The floor cost of any proxy: a bare byte relay from TCP to Postgres's unix socket, with
//! tokio's `copy_bidirectional` on a current-thread runtime. No protocol awareness at all.
//! `scripts/bench.sh` runs it beside pgtide, PgBouncer and direct Postgres.
//!
//! Usage: cargo bench --bench relay -- LISTEN_ADDR UNIX_SOCKET_PATH

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(listen), Some(socket)) = (args.next(), args.next()) else {
        eprintln!("usage: relay LISTEN_ADDR UNIX_SOCKET_PATH");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        eprintln!("relay: {listen} -> {socket}");
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
}
