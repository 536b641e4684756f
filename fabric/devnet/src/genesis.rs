//! The genesis block: a CONFIG transaction carrying a minimal but well-formed channel
//! configuration (Application group with Org1MSP and Org2MSP, Orderer group with
//! OrdererMSP, NodeOUs, policies as the fabric-samples test network's configtx.yaml
//! defines them, batch size and timeout of the devnet's ordering service).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use prost::Message;

use super::blocks::{make_header, new_block};
use gxd_fabric::identity::{SignError, SigningIdentity};
use gxd_fabric::proto::common::{
    self, Block, Capabilities, Capability, ChannelHeader, Config, ConfigEnvelope, ConfigGroup,
    ConfigPolicy, ConfigValue, Envelope, HeaderType, ImplicitMetaPolicy, MspPrincipal, MspRole,
    Payload, Policy, SignatureHeader, SignaturePolicy, SignaturePolicyEnvelope,
    implicit_meta_policy, msp_principal, msp_role, policy, signature_policy,
};
use gxd_fabric::proto::msp::{
    FabricCryptoConfig, FabricMspConfig, FabricNodeOUs, FabricOuIdentifier, MspConfig,
};
use gxd_fabric::proto::orderer::{BatchSize, BatchTimeout, ChannelRestrictions, ConsensusType};
use gxd_fabric::proto::protos::{AnchorPeer, AnchorPeers};
use gxd_fabric::tx::{compute_tx_id, new_nonce, now_timestamp};

/// One organization in the channel configuration.
#[derive(Debug, Clone)]
pub struct ConfigOrg {
    pub msp_id: String,
    pub ca_pem: Vec<u8>,
    pub tls_ca_pem: Vec<u8>,
    /// `Some((host, port))` for an application org's anchor peer.
    pub anchor_peer: Option<(String, i32)>,
}

/// Inputs of the channel configuration.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub channel_id: String,
    pub application_orgs: Vec<ConfigOrg>,
    pub orderer_org: ConfigOrg,
    pub orderer_address: String,
    pub max_message_count: u32,
    pub preferred_max_bytes: u32,
    pub absolute_max_bytes: u32,
    pub batch_timeout: Duration,
}

const ADMINS: &str = "Admins";

fn value(msg: impl Message) -> ConfigValue {
    ConfigValue {
        version: 0,
        value: msg.encode_to_vec(),
        mod_policy: ADMINS.to_owned(),
    }
}

fn capabilities(name: &str) -> ConfigValue {
    let mut map = HashMap::new();
    map.insert(name.to_owned(), Capability {});
    value(Capabilities { capabilities: map })
}

fn implicit(rule: implicit_meta_policy::Rule, sub_policy: &str) -> ConfigPolicy {
    ConfigPolicy {
        version: 0,
        policy: Some(Policy {
            r#type: policy::PolicyType::ImplicitMeta as i32,
            value: ImplicitMetaPolicy {
                sub_policy: sub_policy.to_owned(),
                rule: rule as i32,
            }
            .encode_to_vec(),
        }),
        mod_policy: ADMINS.to_owned(),
    }
}

/// `OR(msp.role1, msp.role2, ...)` as a signature policy.
fn signed_by_any(msp_id: &str, roles: &[msp_role::MspRoleType]) -> ConfigPolicy {
    let identities: Vec<MspPrincipal> = roles
        .iter()
        .map(|role| MspPrincipal {
            principal_classification: msp_principal::Classification::Role as i32,
            principal: MspRole {
                msp_identifier: msp_id.to_owned(),
                role: *role as i32,
            }
            .encode_to_vec(),
        })
        .collect();
    let rules = (0..identities.len())
        .map(|i| SignaturePolicy {
            r#type: Some(signature_policy::Type::SignedBy(
                i32::try_from(i).unwrap_or(0),
            )),
        })
        .collect();
    ConfigPolicy {
        version: 0,
        policy: Some(Policy {
            r#type: policy::PolicyType::Signature as i32,
            value: SignaturePolicyEnvelope {
                version: 0,
                rule: Some(SignaturePolicy {
                    r#type: Some(signature_policy::Type::NOutOf(signature_policy::NOutOf {
                        n: 1,
                        rules,
                    })),
                }),
                identities,
            }
            .encode_to_vec(),
        }),
        mod_policy: ADMINS.to_owned(),
    }
}

fn ou(ca_pem: &[u8], name: &str) -> Option<FabricOuIdentifier> {
    Some(FabricOuIdentifier {
        certificate: ca_pem.to_vec(),
        organizational_unit_identifier: name.to_owned(),
    })
}

fn org_group(org: &ConfigOrg, orderer: bool) -> ConfigGroup {
    use msp_role::MspRoleType as R;
    let msp = FabricMspConfig {
        name: org.msp_id.clone(),
        root_certs: vec![org.ca_pem.clone()],
        tls_root_certs: vec![org.tls_ca_pem.clone()],
        crypto_config: Some(FabricCryptoConfig {
            signature_hash_family: "SHA2".to_owned(),
            identity_identifier_hash_function: "SHA256".to_owned(),
        }),
        fabric_node_ous: Some(FabricNodeOUs {
            enable: true,
            client_ou_identifier: ou(&org.ca_pem, "client"),
            peer_ou_identifier: ou(&org.ca_pem, "peer"),
            admin_ou_identifier: ou(&org.ca_pem, "admin"),
            orderer_ou_identifier: ou(&org.ca_pem, "orderer"),
        }),
        ..Default::default()
    };
    let mut values = BTreeMap::new();
    values.insert(
        "MSP".to_owned(),
        value(MspConfig {
            r#type: 0,
            config: msp.encode_to_vec(),
        }),
    );
    if let Some((host, port)) = &org.anchor_peer {
        values.insert(
            "AnchorPeers".to_owned(),
            value(AnchorPeers {
                anchor_peers: vec![AnchorPeer {
                    host: host.clone(),
                    port: *port,
                }],
            }),
        );
    }
    let mut policies = BTreeMap::new();
    let id = org.msp_id.as_str();
    if orderer {
        policies.insert("Readers".to_owned(), signed_by_any(id, &[R::Member]));
        policies.insert("Writers".to_owned(), signed_by_any(id, &[R::Member]));
    } else {
        policies.insert(
            "Readers".to_owned(),
            signed_by_any(id, &[R::Admin, R::Peer, R::Client]),
        );
        policies.insert(
            "Writers".to_owned(),
            signed_by_any(id, &[R::Admin, R::Client]),
        );
        policies.insert("Endorsement".to_owned(), signed_by_any(id, &[R::Peer]));
    }
    policies.insert("Admins".to_owned(), signed_by_any(id, &[R::Admin]));
    ConfigGroup {
        version: 0,
        groups: BTreeMap::new(),
        values,
        policies,
        mod_policy: ADMINS.to_owned(),
    }
}

fn standard_policies() -> BTreeMap<String, ConfigPolicy> {
    use implicit_meta_policy::Rule;
    let mut p = BTreeMap::new();
    p.insert("Readers".to_owned(), implicit(Rule::Any, "Readers"));
    p.insert("Writers".to_owned(), implicit(Rule::Any, "Writers"));
    p.insert("Admins".to_owned(), implicit(Rule::Majority, "Admins"));
    p
}

/// The channel `Config` of the devnet.
pub fn channel_config(cfg: &ChannelConfig) -> Config {
    use implicit_meta_policy::Rule;

    let mut app_groups = BTreeMap::new();
    for org in &cfg.application_orgs {
        app_groups.insert(org.msp_id.clone(), org_group(org, false));
    }
    let mut app_policies = standard_policies();
    app_policies.insert(
        "Endorsement".to_owned(),
        implicit(Rule::Majority, "Endorsement"),
    );
    app_policies.insert(
        "LifecycleEndorsement".to_owned(),
        implicit(Rule::Majority, "Endorsement"),
    );
    let mut app_values = BTreeMap::new();
    app_values.insert("Capabilities".to_owned(), capabilities("V2_5"));
    let application = ConfigGroup {
        version: 0,
        groups: app_groups,
        values: app_values,
        policies: app_policies,
        mod_policy: ADMINS.to_owned(),
    };

    let mut ord_groups = BTreeMap::new();
    ord_groups.insert(
        cfg.orderer_org.msp_id.clone(),
        org_group(&cfg.orderer_org, true),
    );
    let mut ord_policies = standard_policies();
    ord_policies.insert("BlockValidation".to_owned(), implicit(Rule::Any, "Writers"));
    let mut ord_values = BTreeMap::new();
    ord_values.insert(
        "ConsensusType".to_owned(),
        value(ConsensusType {
            r#type: "solo".to_owned(),
            metadata: Vec::new(),
            state: 0,
        }),
    );
    ord_values.insert(
        "BatchSize".to_owned(),
        value(BatchSize {
            max_message_count: cfg.max_message_count,
            absolute_max_bytes: cfg.absolute_max_bytes,
            preferred_max_bytes: cfg.preferred_max_bytes,
        }),
    );
    ord_values.insert(
        "BatchTimeout".to_owned(),
        value(BatchTimeout {
            timeout: format!("{}ms", cfg.batch_timeout.as_millis()),
        }),
    );
    ord_values.insert(
        "ChannelRestrictions".to_owned(),
        value(ChannelRestrictions { max_count: 0 }),
    );
    ord_values.insert("Capabilities".to_owned(), capabilities("V2_0"));
    let orderer = ConfigGroup {
        version: 0,
        groups: ord_groups,
        values: ord_values,
        policies: ord_policies,
        mod_policy: ADMINS.to_owned(),
    };

    let mut groups = BTreeMap::new();
    groups.insert("Application".to_owned(), application);
    groups.insert("Orderer".to_owned(), orderer);
    let mut values = BTreeMap::new();
    values.insert(
        "HashingAlgorithm".to_owned(),
        value(common::HashingAlgorithm {
            name: "SHA256".to_owned(),
        }),
    );
    values.insert(
        "BlockDataHashingStructure".to_owned(),
        value(common::BlockDataHashingStructure { width: u32::MAX }),
    );
    values.insert(
        "OrdererAddresses".to_owned(),
        value(common::OrdererAddresses {
            addresses: vec![cfg.orderer_address.clone()],
        }),
    );
    values.insert("Capabilities".to_owned(), capabilities("V2_0"));
    Config {
        sequence: 0,
        channel_group: Some(ConfigGroup {
            version: 0,
            groups,
            values,
            policies: standard_policies(),
            mod_policy: ADMINS.to_owned(),
        }),
    }
}

/// Block 0: one CONFIG envelope signed by the orderer. Metadata is left to the caller.
pub fn genesis_block(cfg: &ChannelConfig, orderer: &SigningIdentity) -> Result<Block, SignError> {
    let nonce = new_nonce();
    let creator = orderer.creator().to_vec();
    let chdr = ChannelHeader {
        r#type: HeaderType::Config as i32,
        version: 1,
        timestamp: Some(now_timestamp()),
        channel_id: cfg.channel_id.clone(),
        tx_id: compute_tx_id(&nonce, &creator),
        epoch: 0,
        extension: Vec::new(),
        tls_cert_hash: Vec::new(),
    };
    let shdr = SignatureHeader { creator, nonce };
    let payload = Payload {
        header: Some(make_header(&chdr, &shdr)),
        data: ConfigEnvelope {
            config: Some(channel_config(cfg)),
            last_update: None,
        }
        .encode_to_vec(),
    }
    .encode_to_vec();
    let signature = orderer.sign(&payload)?;
    let envelope = Envelope { payload, signature }.encode_to_vec();
    Ok(new_block(0, Vec::new(), vec![envelope]))
}
