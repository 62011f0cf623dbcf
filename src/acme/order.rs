//! One ACME order: every challenge response published (DNS-01 TXT
//! records through the provider, HTTP-01 answers through the redirector),
//! the CA asked to check them, the responses withdrawn whatever happened,
//! the order finalised with a fresh key and the chain downloaded.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use instant_acme::{
    AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::{Acme, Managed};

impl Acme {
    /// The ACME conversation for one certificate: PEM chain and PEM key.
    pub(super) async fn order(&self, managed: &Managed) -> Result<(String, String)> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = managed
            .names
            .iter()
            .map(|n| Identifier::Dns(n.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .context("new order")?;
        let mut published = Published::default();
        let validated = self.validate(&mut order, managed, &mut published).await;
        // Always withdrawn, whether validation worked or not.
        self.withdraw(published).await;
        validated?;
        let key = order.finalize().await.context("finalize")?;
        let chain = order
            .poll_certificate(&self.retry_policy())
            .await
            .context("certificate download")?;
        Ok((chain, key))
    }

    /// Publishes every challenge response first (so the DNS-01 values of
    /// the apex and the wildcard coexist), then asks the CA to check them
    /// and waits for the order to become ready.
    async fn validate(
        &self,
        order: &mut instant_acme::Order,
        managed: &Managed,
        published: &mut Published,
    ) -> Result<()> {
        let kind = match managed.dns01 {
            true => ChallengeType::Dns01,
            false => ChallengeType::Http01,
        };
        let pending = self.publish_all(order, &kind, published).await?;
        if pending > 0 && managed.dns01 && !self.args.acme_dns_propagation.is_zero() {
            tokio::time::sleep(self.args.acme_dns_propagation).await;
        }
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.context("authorization")?;
            if authz.status != AuthorizationStatus::Pending {
                continue;
            }
            if let Some(mut challenge) = authz.challenge(kind.clone()) {
                challenge.set_ready().await.context("challenge ready")?;
            }
        }
        match order.poll_ready(&self.retry_policy()).await {
            Ok(OrderStatus::Ready) => Ok(()),
            Ok(status) => Err(anyhow!("order is {status:?}: {}", order_problem(order))),
            Err(err) => Err(anyhow!(err).context("validation")),
        }
    }

    /// Publishes the response of every pending authorization; returns how
    /// many there were. What was published is noted in `published` as it
    /// goes, so a failure half-way still gets everything withdrawn.
    async fn publish_all(
        &self,
        order: &mut instant_acme::Order,
        kind: &ChallengeType,
        published: &mut Published,
    ) -> Result<usize> {
        let mut pending = 0;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.context("authorization")?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => bail!("authorization for {:?} is {status:?}", authz.identifier()),
            }
            let challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| anyhow!("the CA offers no {kind:?} challenge"))?;
            let key_auth = challenge.key_authorization();
            if *kind == ChallengeType::Dns01 {
                let Identifier::Dns(name) = challenge.identifier().identifier else {
                    bail!("not a DNS identifier");
                };
                let fqdn = format!("_acme-challenge.{name}");
                let value = key_auth.dns_value();
                let provider = self.dns.as_ref().context("no DNS-01 provider")?;
                provider.set(&fqdn, &value).await?;
                published.txt.push((fqdn, value));
            } else {
                let ttl = self.args.acme_order_timeout;
                let answer = self
                    .challenges
                    .publish(&challenge.token, key_auth.as_str(), ttl);
                published.tokens.push(challenge.token.clone());
                answer.await.context("publishing the HTTP-01 answer")?;
            }
            pending += 1;
        }
        Ok(pending)
    }

    /// Removes published challenge responses; failures are logged only.
    async fn withdraw(&self, published: Published) {
        for token in &published.tokens {
            self.challenges.withdraw(token).await;
        }
        let Some(provider) = &self.dns else {
            return;
        };
        for (fqdn, value) in &published.txt {
            if let Err(err) = provider.unset(fqdn, value).await {
                tracing::warn!(error = %format!("{err:#}"), "could not remove a DNS-01 record");
            }
        }
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(2.0)
            .timeout(self.args.acme_order_timeout)
    }
}

/// Challenge responses published for one order, to withdraw afterwards.
#[derive(Default)]
struct Published {
    txt: Vec<(String, String)>,
    tokens: Vec<String>,
}

/// What the CA said went wrong with an order, if it said.
fn order_problem(order: &mut instant_acme::Order) -> String {
    match &order.state().error {
        Some(problem) => problem.to_string(),
        None => "no detail from the CA".into(),
    }
}
