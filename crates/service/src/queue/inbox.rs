//! Inbox rows: the append path used by ingress.

use crate::store::{Database, StoreError};

pub use crate::store::NewDelivery;

/// Appends deliveries whose svix-ids are distinct, in one transaction; returns,
/// for each row, whether it was new (false: that svix-id was already stored).
/// Durable when it returns (the store's backend makes it so).
pub async fn append_batch(db: &Database, rows: &[NewDelivery]) -> Result<Vec<bool>, StoreError> {
    db.append(rows).await
}
