//! The platform the ARM host and its providers run in: the store, the RBAC engine and the
//! identity service of this server.

use crate::state::AppState;
use cloister_arm::provider::{Changed, Platform};
use cloister_core::error::ArmError;
use cloister_core::scope::Scope;
use cloister_store::{ServicePrincipal, Store};

#[async_trait::async_trait]
impl Platform for AppState {
    fn store(&self) -> &Store {
        &self.store
    }

    fn authorize(&self, principal: &str, action: &str, scope: &Scope) -> Result<(), ArmError> {
        self.rbac.authorize(principal, action, scope)
    }

    fn home_tenant(&self) -> String {
        self.id.home_tenant.clone()
    }

    fn public_url(&self) -> String {
        self.cfg.public_url()
    }

    fn new_managed_identity(&self, resource_id: &str, name: &str) -> ServicePrincipal {
        self.id.new_managed_identity(resource_id, name)
    }

    async fn principal_kind(&self, id: &str) -> Result<Option<(String, String)>, ArmError> {
        self.id.principal_kind(id).await.map_err(ArmError::from)
    }

    fn shared(&self) -> Option<std::sync::Arc<dyn Platform>> {
        let st = self.me.get()?.upgrade()?;
        Some(st)
    }

    async fn changed(&self, what: Changed) -> Result<(), ArmError> {
        if what.identities || what.principals {
            self.id.invalidate_identity_sets();
        }
        if what.principals {
            self.id.invalidate_all_clients();
        }
        if what.rbac || what.principals {
            self.rbac.changed().await?;
        }
        Ok(())
    }
}
