//! `clerksync serve`: the server until Ctrl-C or SIGTERM.

use anyhow::Context;
use clerksync::config::Config;
use clerksync::App;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {listen} (set CLERKSYNC_LISTEN or --listen to a free address)"
            )
        })?;
    let app = App::build(config, listener).await?;
    tracing::info!(addr = %app.local_addr(), "clerksync listening");
    app.run(shutdown_signal()).await?;
    tracing::info!("clerksync stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (`serve` and `demo` stop on it).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested: finishing in-flight requests");
}
