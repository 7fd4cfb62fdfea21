//! The load generator (`clerksync loadgen`).

#[derive(Debug, clap::Args)]
pub struct LoadgenArgs {}

pub async fn run(_args: LoadgenArgs) -> Result<String, std::io::Error> {
    Ok(String::new())
}
