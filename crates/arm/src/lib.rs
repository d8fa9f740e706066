//! The ARM framework: what every Azure Resource Manager resource type shares, and nothing
//! about any one type.
//!
//! * [`registry`]: providers register their namespace, resource types (child types to any
//!   depth), api-versions, locations, POST actions and long-running operations; a request path
//!   is routed once into a typed [`registry::Route`] (item, collection or action), with ARM's
//!   `NoRegisteredProviderFound` / `InvalidResourceType` for what nobody registered, and the
//!   authorization action derived from the type and method.
//! * [`conditional`]: ETags and `If-Match` / `If-None-Match`.
//! * [`system_data`]: ARM's `systemData` block.
//! * [`paging`]: `$top`, `$skipToken` and `nextLink`.
//! * [`filter`]: the `$filter` subset ARM's resource lists accept.
//! * [`provider`]: the interface a service implements to own its types ([`provider::Provider`])
//!   and the one the platform offers back ([`provider::Platform`]).
//! * [`host`]: routes every management request once and does the generic work of every type
//!   (CRUD, lists, ETags, systemData, tags, the identity block, cascades), calling the owning
//!   provider's hooks; [`hierarchy`]: ARM's own subscriptions, resource groups, management
//!   groups and aliases; [`operations`]: long-running operations.
//! * [`lro`]: provisioning states, operation-status bodies and the headers azure-core's and
//!   azure-mgmt-core's pollers follow.
//! * [`openapi`]: the OpenAPI document, its ARM operations generated from the registry.
//!
//! ```
//! use cloister_arm::registry::{ProviderSpec, Registry, RouteKind, TypeSpec};
//! let mut reg = Registry::default();
//! reg.register(ProviderSpec::new("Microsoft.App").with_type(
//!     TypeSpec::new("sessionPools", &["2024-02-02-preview", "2025-01-01"]),
//! ))
//! .unwrap();
//! let r = reg
//!     .route(
//!         &http::Method::GET,
//!         "/subscriptions/s1/resourceGroups/g/providers/microsoft.app/SESSIONPOOLS/p1",
//!         "2025-01-01",
//!     )
//!     .unwrap();
//! assert_eq!(r.kind, RouteKind::Item);
//! assert_eq!(r.type_name, "Microsoft.App/sessionPools");
//! assert_eq!(r.authz_action, "Microsoft.App/sessionPools/read");
//! ```

pub mod conditional;
pub mod filter;
pub mod hierarchy;
pub mod host;
pub mod lro;
pub mod openapi;
pub mod operations;
pub mod paging;
pub mod provider;
pub mod registry;
pub mod system_data;
pub mod wire;
