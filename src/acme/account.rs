//! The ACME account: one per CA directory, created on first use and kept
//! in the state directory, or in a cluster in Redis (where the first node
//! to join brings its own, so a single node that becomes a cluster keeps
//! its account).

use std::path::PathBuf;

use anyhow::{Context, Result};
use instant_acme::{Account, AccountCredentials, NewAccount};
use sha2::Digest;

use super::{store, Acme};

impl Acme {
    /// The account, created (and stored) or loaded on first use.
    pub(super) async fn account(&self) -> Result<Account> {
        let mut slot = self.account.lock().await;
        if let Some(account) = &*slot {
            return Ok(account.clone());
        }
        let account = self.load_or_create_account().await?;
        *slot = Some(account.clone());
        Ok(account)
    }

    async fn load_or_create_account(&self) -> Result<Account> {
        let directory = self.args.directory_url().to_string();
        // One account per directory: a staging account means nothing to
        // production.
        let digest = sha2::Sha256::digest(directory.as_bytes());
        let tag: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        if let Some(json) = self.stored_account(&tag).await? {
            return self.account_from(&json, &tag, &directory).await;
        }
        let contact = format!("mailto:{}", self.args.acme_email.as_deref().unwrap_or(""));
        let (account, credentials) = self
            .builder()?
            .create(
                &NewAccount {
                    contact: &[&contact],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.clone(),
                None,
            )
            .await
            .with_context(|| format!("ACME directory {directory}: creating the account"))?;
        let json = serde_json::to_vec(&credentials)?;
        let in_force = self.store_account(&tag, &json).await?;
        if in_force != json {
            tracing::info!("another node of the cluster created the ACME account first: using it");
            return self.account_from(&in_force, &tag, &directory).await;
        }
        tracing::info!(directory, id = account.id(), "ACME account created");
        Ok(account)
    }

    /// The account whose credentials (JSON) are stored for `tag`.
    async fn account_from(&self, json: &[u8], tag: &str, directory: &str) -> Result<Account> {
        let whence = match self.shared.get() {
            Some(_) => format!("the ACME account in Redis (acme:account:{tag})"),
            None => self.account_path(tag).display().to_string(),
        };
        let credentials: AccountCredentials =
            serde_json::from_slice(json).with_context(|| format!("{whence} is corrupt"))?;
        self.builder()?
            .from_credentials(credentials)
            .await
            .with_context(|| format!("ACME directory {directory}"))
    }

    /// Where directory `tag`'s account is kept on a single node.
    fn account_path(&self, tag: &str) -> PathBuf {
        self.state_dir
            .join("acme")
            .join(format!("account-{tag}.json"))
    }

    /// The stored account (its credentials as JSON): the file, or in a
    /// cluster Redis — which the first node to join gives its own, so a
    /// single node that becomes a cluster keeps its account.
    async fn stored_account(&self, tag: &str) -> Result<Option<Vec<u8>>> {
        let path = self.account_path(tag);
        let file = match path.exists() {
            true => Some(
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?,
            ),
            false => None,
        };
        let Some(shared) = self.shared.get() else {
            return Ok(file);
        };
        if let Some(json) = shared.account(tag).await? {
            return Ok(Some(json));
        }
        match file {
            Some(json) => Ok(Some(shared.save_account(tag, &json).await?)),
            None => Ok(None),
        }
    }

    /// Stores a new account; returns the one in force (in a cluster,
    /// another node's if it stored one first).
    async fn store_account(&self, tag: &str, json: &[u8]) -> Result<Vec<u8>> {
        if let Some(shared) = self.shared.get() {
            return shared.save_account(tag, json).await;
        }
        let path = self.account_path(tag);
        store::create_private_dir(&self.state_dir.join("acme"))?;
        crate::state::write_private_file(&path, json)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(json.to_vec())
    }

    fn builder(&self) -> Result<instant_acme::AccountBuilder> {
        match &self.args.acme_ca_root {
            Some(root) => instant_acme::Account::builder_with_root(root)
                .with_context(|| format!("--acme-ca-root {}", root.display())),
            None => instant_acme::Account::builder().context("ACME HTTPS client"),
        }
    }
}
