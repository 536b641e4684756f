//! GX's command catalog: the outbox command types, their payloads (what the REST API
//! enqueues) and how each becomes a chaincode invocation (the engine's
//! [`CommandCatalog`]).
//!
//! Payloads are JSON with camelCase fields, unknown fields refused. Ids that the ledger
//! refuses to reuse — a transfer id, a proposal id — derive from the command id, so the
//! chaincode's refusal of a reused id backs up the outbox's exactly-once: a command can
//! never move funds twice, whatever the engine does.
//!
//! | command type | payload | chaincode invocation |
//! |---|---|---|
//! | `BOOTSTRAP_SYSTEM` | `treasuryWalletId, initialSupply` | `Bootstrap(treasuryWalletId, initialSupply)` |
//! | `CREATE_USER` | `userId, country, profileCommitment` | `CreateUser(userId, {"country","profileCommitment"})` — no personal data |
//! | `TRANSFER_TOKENS` | `fromWalletId, toWalletId, amount, memo?` | `TransferTokens(<command id>, from, to, amount, memo)` |
//! | `CREATE_MULTISIG_WALLET` | `walletId, owners, threshold` | `CreateMultisigWallet(walletId, ownersJson, threshold)` |
//! | `PROPOSE_TRANSFER` | `fromWalletId, toWalletId, amount, memo?` | `ProposeTransfer(<command id>, from, to, amount, memo)` |
//! | `APPROVE_TRANSFER` / `REJECT_TRANSFER` | `proposalId, approverId` | `ApproveTransfer` / `RejectTransfer(proposalId, approverId)` |

use gxd_engine::catalog::{CommandCatalog, InvalidCommand, Invocation};
use gxd_storage::outbox::CommandId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::contract::function;

/// Command type names.
pub mod command_type {
    pub const BOOTSTRAP_SYSTEM: &str = "BOOTSTRAP_SYSTEM";
    pub const CREATE_USER: &str = "CREATE_USER";
    pub const TRANSFER_TOKENS: &str = "TRANSFER_TOKENS";
    pub const CREATE_MULTISIG_WALLET: &str = "CREATE_MULTISIG_WALLET";
    pub const PROPOSE_TRANSFER: &str = "PROPOSE_TRANSFER";
    pub const APPROVE_TRANSFER: &str = "APPROVE_TRANSFER";
    pub const REJECT_TRANSFER: &str = "REJECT_TRANSFER";

    /// Every command type, in the table's order.
    pub const ALL: [&str; 7] = [
        BOOTSTRAP_SYSTEM,
        CREATE_USER,
        TRANSFER_TOKENS,
        CREATE_MULTISIG_WALLET,
        PROPOSE_TRANSFER,
        APPROVE_TRANSFER,
        REJECT_TRANSFER,
    ];
}

/// `BOOTSTRAP_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapSystem {
    pub treasury_wallet_id: String,
    pub initial_supply: String,
}

/// `CREATE_USER`. The person's profile stays in the organization's database; the ledger
/// gets the user id, the country and the salted commitment to the profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateUser {
    pub user_id: String,
    pub country: String,
    /// Hex SHA-256 of (salt ‖ profile).
    pub profile_commitment: String,
}

/// What `CreateUser` records on the ledger as its `profileJson`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerProfile {
    pub country: String,
    pub profile_commitment: String,
}

/// `TRANSFER_TOKENS` and `PROPOSE_TRANSFER`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Transfer {
    pub from_wallet_id: String,
    pub to_wallet_id: String,
    /// Decimal string of a positive integer, minor units.
    pub amount: String,
    #[serde(default)]
    pub memo: Option<String>,
}

/// `CREATE_MULTISIG_WALLET`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateMultisigWallet {
    pub wallet_id: String,
    pub owners: Vec<String>,
    pub threshold: u32,
}

/// `APPROVE_TRANSFER` and `REJECT_TRANSFER`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Decision {
    pub proposal_id: String,
    pub approver_id: String,
}

/// The ledger id of a command's transfer or proposal: the command id.
pub fn ledger_id(command_id: CommandId) -> String {
    command_id.to_string()
}

/// GX's [`CommandCatalog`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GxCatalog;

fn parse<T: DeserializeOwned>(command_type: &str, payload: &[u8]) -> Result<T, InvalidCommand> {
    serde_json::from_slice(payload)
        .map_err(|e| InvalidCommand(format!("{command_type} payload is not readable: {e}")))
}

fn invocation(function: &str, args: Vec<String>) -> Invocation {
    Invocation {
        function: function.to_owned(),
        args: args.into_iter().map(String::into_bytes).collect(),
    }
}

impl CommandCatalog for GxCatalog {
    fn invocation(
        &self,
        command_type: &str,
        command_id: CommandId,
        payload: &[u8],
    ) -> Result<Invocation, InvalidCommand> {
        use crate::commands::command_type as t;
        let json = |v: &dyn erased::Json| {
            v.to_json()
                .map_err(|e| InvalidCommand(format!("cannot encode {command_type}: {e}")))
        };
        Ok(match command_type {
            t::BOOTSTRAP_SYSTEM => {
                let p: BootstrapSystem = parse(command_type, payload)?;
                invocation(
                    function::BOOTSTRAP,
                    vec![p.treasury_wallet_id, p.initial_supply],
                )
            }
            t::CREATE_USER => {
                let p: CreateUser = parse(command_type, payload)?;
                let profile = json(&LedgerProfile {
                    country: p.country,
                    profile_commitment: p.profile_commitment,
                })?;
                invocation(function::CREATE_USER, vec![p.user_id, profile])
            }
            t::TRANSFER_TOKENS | t::PROPOSE_TRANSFER => {
                let p: Transfer = parse(command_type, payload)?;
                let f = if command_type == t::TRANSFER_TOKENS {
                    function::TRANSFER_TOKENS
                } else {
                    function::PROPOSE_TRANSFER
                };
                invocation(
                    f,
                    vec![
                        ledger_id(command_id),
                        p.from_wallet_id,
                        p.to_wallet_id,
                        p.amount,
                        p.memo.unwrap_or_default(),
                    ],
                )
            }
            t::CREATE_MULTISIG_WALLET => {
                let p: CreateMultisigWallet = parse(command_type, payload)?;
                let owners = json(&p.owners)?;
                invocation(
                    function::CREATE_MULTISIG_WALLET,
                    vec![p.wallet_id, owners, p.threshold.to_string()],
                )
            }
            t::APPROVE_TRANSFER | t::REJECT_TRANSFER => {
                let p: Decision = parse(command_type, payload)?;
                let f = if command_type == t::APPROVE_TRANSFER {
                    function::APPROVE_TRANSFER
                } else {
                    function::REJECT_TRANSFER
                };
                invocation(f, vec![p.proposal_id, p.approver_id])
            }
            other => {
                return Err(InvalidCommand(format!(
                    "unknown command type {other:?} (known: {})",
                    t::ALL.join(", ")
                )));
            }
        })
    }
}

/// Object-safe JSON encoding, so one closure encodes the catalog's argument types.
mod erased {
    pub trait Json {
        fn to_json(&self) -> serde_json::Result<String>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> serde_json::Result<String> {
            serde_json::to_string(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(inv: &Invocation) -> Vec<String> {
        inv.args
            .iter()
            .map(|a| String::from_utf8(a.clone()).unwrap())
            .collect()
    }

    #[test]
    fn every_command_type_maps_to_its_invocation() {
        let id = CommandId::new_v7();
        let cases: [(&str, &str, &str, Vec<String>); 7] = [
            (
                command_type::BOOTSTRAP_SYSTEM,
                r#"{"treasuryWalletId":"treasury","initialSupply":"1000"}"#,
                "Bootstrap",
                vec!["treasury".into(), "1000".into()],
            ),
            (
                command_type::CREATE_USER,
                r#"{"userId":"alice","country":"DE","profileCommitment":"ab12"}"#,
                "CreateUser",
                vec![
                    "alice".into(),
                    r#"{"country":"DE","profileCommitment":"ab12"}"#.into(),
                ],
            ),
            (
                command_type::TRANSFER_TOKENS,
                r#"{"fromWalletId":"a","toWalletId":"b","amount":"5","memo":"rent"}"#,
                "TransferTokens",
                vec![
                    id.to_string(),
                    "a".into(),
                    "b".into(),
                    "5".into(),
                    "rent".into(),
                ],
            ),
            (
                command_type::CREATE_MULTISIG_WALLET,
                r#"{"walletId":"vault","owners":["a","b"],"threshold":2}"#,
                "CreateMultisigWallet",
                vec!["vault".into(), r#"["a","b"]"#.into(), "2".into()],
            ),
            (
                command_type::PROPOSE_TRANSFER,
                r#"{"fromWalletId":"vault","toWalletId":"b","amount":"9"}"#,
                "ProposeTransfer",
                vec![
                    id.to_string(),
                    "vault".into(),
                    "b".into(),
                    "9".into(),
                    "".into(),
                ],
            ),
            (
                command_type::APPROVE_TRANSFER,
                r#"{"proposalId":"p","approverId":"a"}"#,
                "ApproveTransfer",
                vec!["p".into(), "a".into()],
            ),
            (
                command_type::REJECT_TRANSFER,
                r#"{"proposalId":"p","approverId":"b"}"#,
                "RejectTransfer",
                vec!["p".into(), "b".into()],
            ),
        ];
        for (ty, payload, function, expected) in cases {
            let inv = GxCatalog.invocation(ty, id, payload.as_bytes()).unwrap();
            assert_eq!(inv.function, function, "{ty}");
            assert_eq!(args(&inv), expected, "{ty}");
        }
    }

    #[test]
    fn the_ledger_gets_no_personal_data() {
        // A profile field in the command is refused, so nothing but the country and the
        // commitment can reach the ledger.
        let err = GxCatalog
            .invocation(
                command_type::CREATE_USER,
                CommandId::new_v7(),
                br#"{"userId":"a","country":"DE","profileCommitment":"c","email":"a@x"}"#,
            )
            .unwrap_err();
        assert!(err.0.contains("unknown field `email`"), "{err}");
    }

    #[test]
    fn unreadable_payloads_and_unknown_types_are_invalid_commands() {
        let id = CommandId::new_v7();
        for (ty, payload) in [
            (command_type::TRANSFER_TOKENS, &b"{"[..]),
            (command_type::TRANSFER_TOKENS, br#"{"fromWalletId":"a"}"#),
            (
                command_type::TRANSFER_TOKENS,
                br#"{"fromWalletId":"a","toWalletId":"b","amount":5}"#,
            ),
            ("MINT_FREE_MONEY", br#"{}"#),
        ] {
            let err = GxCatalog.invocation(ty, id, payload).unwrap_err();
            assert!(!err.0.is_empty());
        }
        // Transfer ids derive from the command: two commands, two ids.
        let p = br#"{"fromWalletId":"a","toWalletId":"b","amount":"1"}"#;
        let a = GxCatalog
            .invocation(command_type::TRANSFER_TOKENS, CommandId::new_v7(), p)
            .unwrap();
        let b = GxCatalog
            .invocation(command_type::TRANSFER_TOKENS, CommandId::new_v7(), p)
            .unwrap();
        assert_ne!(a.args[0], b.args[0]);
    }
}
