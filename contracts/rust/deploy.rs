//! Deploying the escrow and the test token.

use alloy::{network::Network, providers::Provider};

use crate::{ContractsError, SluiceEscrow, TestToken};

/// The EIP-712 domain name of the v1 Tempo Stream Channel (what mppx signs for).
pub const DEFAULT_NAME: &str = "Tempo Stream Channel";
/// The EIP-712 domain version of the v1 Tempo Stream Channel.
pub const DEFAULT_VERSION: &str = "1";
/// Seconds between `requestClose` and `withdraw` in the v1 profile (15 minutes).
pub const DEFAULT_CLOSE_GRACE_PERIOD: u64 = 15 * 60;

/// The escrow's constructor parameters. The default is the mppx-compatible v1 profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscrowConfig {
    /// EIP-712 domain name.
    pub name: String,
    /// EIP-712 domain version.
    pub version: String,
    /// Seconds between `requestClose` and `withdraw`.
    pub close_grace_period: u64,
}

impl Default for EscrowConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            version: DEFAULT_VERSION.to_owned(),
            close_grace_period: DEFAULT_CLOSE_GRACE_PERIOD,
        }
    }
}

/// Deploys an escrow from the provider's default sender and waits for its receipt.
pub async fn deploy_escrow<P, N>(
    provider: P,
    config: &EscrowConfig,
) -> Result<SluiceEscrow::SluiceEscrowInstance<P, N>, ContractsError>
where
    P: Provider<N>,
    N: Network,
{
    SluiceEscrow::deploy(
        provider,
        config.name.clone(),
        config.version.clone(),
        config.close_grace_period,
    )
    .await
    .map_err(|source| ContractsError::Deploy {
        contract: "SluiceEscrow",
        source: Box::new(source),
    })
}

/// Deploys a [`TestToken`] (anyone may mint) and waits for its receipt.
pub async fn deploy_test_token<P, N>(
    provider: P,
    name: &str,
    symbol: &str,
    decimals: u8,
) -> Result<TestToken::TestTokenInstance<P, N>, ContractsError>
where
    P: Provider<N>,
    N: Network,
{
    TestToken::deploy(provider, name.to_owned(), symbol.to_owned(), decimals)
        .await
        .map_err(|source| ContractsError::Deploy {
            contract: "TestToken",
            source: Box::new(source),
        })
}
