//! The GX chaincode, natively in Rust (see BRIEF.md "The GX domain").
//!
//! Deterministic: its only inputs are the arguments, the creator's MSP id and NodeOU role,
//! and the world state as read through the [`Stub`]. Like Fabric's shim, reads return the
//! state committed before the transaction (a transaction does not read its own writes), so
//! every function reads everything first, then writes.
//!
//! Amounts are decimal strings of non-negative integers in minor units (canonical: no sign,
//! no leading zeros, at most 39 digits), computed with checked `u128` arithmetic — never
//! floating point. Every transaction emits exactly one chaincode event whose payload is JSON
//! with camelCase fields, and returns the same JSON as its result. The function names, event
//! names, payloads and query results are the [`contract`] module's types.
//!
//! # Authorization
//!
//! Fabric cannot see gxd's end users (gxd signs with its organization's identity), so the
//! chaincode enforces what the ledger can know; which user may act is gxd's rule.
//!
//! - State-changing functions need a *client* or *admin* identity (Fabric's "Writers");
//!   `Bootstrap` needs an admin. Peer, orderer and member identities may only query.
//! - Every wallet records, as `mspId`, the organization that created it: for a user wallet
//!   the creator of `CreateUser`, for a multisig wallet the creator of
//!   `CreateMultisigWallet`, for the treasury the bootstrapping admin's. Only a client or
//!   admin of that organization may spend from it (`TransferTokens`), propose from it
//!   (`ProposeTransfer`) or decide on its proposals (`ApproveTransfer`/`RejectTransfer`).
//!   Anyone may pay into any wallet.
//! - A decision comes from an owner listed on the wallet, once per proposal, while the
//!   proposal is pending.
//! - A `transferId` or `proposalId`, once used, is refused forever, whether the first
//!   transaction completed or not (the record stays): this is the chaincode-level
//!   idempotency an engine relies on when it re-submits a command.
//!
//! # Records written by the first version
//!
//! The chaincode's first version (1.0) stored wallets without `mspId`. Such a wallet is
//! attributed to the organization that version recorded for it elsewhere, and nowhere else:
//!
//! - a user wallet → the `mspId` of its user record (the creator of `CreateUser`);
//! - the treasury → `bootstrappedBy` of the system record (the bootstrapping admin's org);
//! - a multisig wallet → the organization of its owners' user records when they all
//!   belong to one (only that organization's gxd can authenticate its approvers); when
//!   they belong to several, to none: nobody may spend from it, propose from it or decide on
//!   its proposals, and the error says so.
//!
//! `GetWallet` reports the attributed `mspId`, and the next write of the wallet (paying into
//! it counts) stores it. Users and proposals are unchanged in format.

pub use gxd_gx::contract;

use serde::{Deserialize, Serialize};

use self::contract::{
    Event, MultisigWalletCreated, Proposal, ProposalStatus, SystemBootstrapped, TokensTransferred,
    TransferApproved, TransferProposed, TransferRejected, User, UserCreated, Wallet, WalletType,
    function,
};
use super::msp::Role;

/// The chaincode name the devnet installs GX under.
pub const CHAINCODE_NAME: &str = "gx";
/// The chaincode version reported in proposal responses.
pub const CHAINCODE_VERSION: &str = "1.1";

/// What the chaincode sees of the peer (Fabric's `ChaincodeStubInterface`, reduced).
pub trait Stub {
    /// The committed value of `key` (not this transaction's own writes).
    fn get_state(&mut self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Records a write (over the shim protocol a round trip to the peer, which may fail).
    fn put_state(&mut self, key: &str, value: Vec<u8>) -> Result<(), String>;
    /// Sets the transaction's chaincode event (the last call wins, as in Fabric).
    fn set_event(&mut self, name: &str, payload: Vec<u8>);
    /// MSP id of the transaction creator.
    fn creator_msp_id(&self) -> &str;
    /// NodeOU role of the transaction creator.
    fn creator_role(&self) -> Role;
}

const MAX_ID_LEN: usize = 128;
const MAX_MEMO_LEN: usize = 512;
const MAX_PROFILE_LEN: usize = 4096;
const MAX_OWNERS: usize = 32;

/// Fabric's composite key encoding (`CreateCompositeKey`): U+0000 type U+0000 attr U+0000.
fn composite_key(object_type: &str, id: &str) -> String {
    format!("\u{0}{object_type}\u{0}{id}\u{0}")
}

const SYSTEM_KEY: &str = "\u{0}system\u{0}";

fn wallet_key(id: &str) -> String {
    composite_key("wallet", id)
}
fn user_key(id: &str) -> String {
    composite_key("user", id)
}
fn transfer_key(id: &str) -> String {
    composite_key("transfer", id)
}
fn proposal_key(id: &str) -> String {
    composite_key("proposal", id)
}

/// Parses an amount: a canonical decimal string of a non-negative integer.
pub fn parse_amount(field: &str, s: &str) -> Result<u128, String> {
    let canonical = !s.is_empty()
        && s.len() <= 39
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(format!(
            "{field} must be a decimal string of a non-negative integer without sign or leading zeros, got {s:?}"
        ));
    }
    s.parse::<u128>()
        .map_err(|_| format!("{field} is too large: {s}"))
}

fn validate_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("{field} must be 1 to {MAX_ID_LEN} characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'))
    {
        return Err(format!(
            "{field} may contain only letters, digits and - _ . : @, got {id:?}"
        ));
    }
    Ok(())
}

fn validate_memo(memo: &str) -> Result<(), String> {
    if memo.chars().count() > MAX_MEMO_LEN {
        return Err(format!("memo must be at most {MAX_MEMO_LEN} characters"));
    }
    if memo.chars().any(|c| c.is_control()) {
        return Err("memo must not contain control characters".to_owned());
    }
    Ok(())
}

/// The system record (not queryable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SystemRecord {
    treasury_wallet_id: String,
    initial_supply: String,
    bootstrapped_by: String,
}

/// The record that marks a `transferId` as used (not queryable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TransferRecord {
    transfer_id: String,
    from_wallet_id: String,
    to_wallet_id: String,
    amount: String,
    memo: String,
}

fn wallet_balance(wallet: &Wallet) -> Result<u128, String> {
    parse_amount("stored balance", &wallet.balance)
}

fn read_json<T: for<'de> Deserialize<'de>>(
    stub: &mut dyn Stub,
    key: &str,
    what: &str,
) -> Result<Option<T>, String> {
    match stub.get_state(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("stored {what} is corrupt: {e}")),
    }
}

fn write_json<T: Serialize>(stub: &mut dyn Stub, key: &str, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    stub.put_state(key, bytes)
}

/// Sets the transaction's event to `payload` (under its contract name) and returns the
/// same JSON as the transaction's result.
fn emit<E: Event>(stub: &mut dyn Stub, payload: &E) -> Result<Vec<u8>, String> {
    let bytes = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
    stub.set_event(E::NAME, bytes.clone());
    Ok(bytes)
}

fn expect_args<'a, const N: usize>(
    function: &str,
    args: &'a [String],
) -> Result<[&'a str; N], String> {
    if args.len() != N {
        return Err(format!(
            "{function} expects {N} argument{}, got {}",
            if N == 1 { "" } else { "s" },
            args.len()
        ));
    }
    let mut out = [""; N];
    for (slot, arg) in out.iter_mut().zip(args) {
        *slot = arg.as_str();
    }
    Ok(out)
}

/// Reads a wallet; a record without `mspId` gets the organization the first version
/// recorded for it (see the module docs), if any.
fn get_wallet(stub: &mut dyn Stub, id: &str) -> Result<Wallet, String> {
    let mut wallet: Wallet = read_json(stub, &wallet_key(id), "wallet")?
        .ok_or_else(|| format!("wallet {id} does not exist"))?;
    if wallet.msp_id.is_none() {
        wallet.msp_id = legacy_wallet_msp_id(stub, &wallet)?;
    }
    Ok(wallet)
}

/// The organization a wallet record without `mspId` belongs to (see the module docs).
fn legacy_wallet_msp_id(stub: &mut dyn Stub, wallet: &Wallet) -> Result<Option<String>, String> {
    Ok(match wallet.wallet_type {
        WalletType::User => {
            read_json::<User>(stub, &user_key(&wallet.wallet_id), "user")?.map(|user| user.msp_id)
        }
        WalletType::Treasury => read_json::<SystemRecord>(stub, SYSTEM_KEY, "system record")?
            .filter(|sys| sys.treasury_wallet_id == wallet.wallet_id)
            .map(|sys| sys.bootstrapped_by),
        WalletType::Multisig => {
            let mut org: Option<String> = None;
            for owner in &wallet.owners {
                let Some(user) = read_json::<User>(stub, &user_key(owner), "user")? else {
                    return Ok(None);
                };
                match &org {
                    Some(o) if *o != user.msp_id => return Ok(None),
                    Some(_) => {}
                    None => org = Some(user.msp_id),
                }
            }
            org
        }
    })
}

/// "a client", "an admin", …
fn role_with_article(role: Role) -> String {
    let article = match role {
        Role::Admin | Role::Orderer => "an",
        Role::Client | Role::Peer | Role::Member => "a",
    };
    format!("{article} {}", role.as_str())
}

/// State-changing functions need a client or admin identity (Fabric's "Writers").
fn require_writer(stub: &dyn Stub, function: &str) -> Result<(), String> {
    match stub.creator_role() {
        Role::Client | Role::Admin => Ok(()),
        role => Err(format!(
            "{function} requires a client or admin identity; the caller is {} of {}",
            role_with_article(role),
            stub.creator_msp_id()
        )),
    }
}

/// Only a client or admin of the organization that created `wallet` may act on its funds;
/// `action` completes "may not …" (e.g. "spend from it").
fn require_wallet_org(stub: &dyn Stub, wallet: &Wallet, action: &str) -> Result<(), String> {
    let caller = stub.creator_msp_id();
    match &wallet.msp_id {
        Some(owner) if owner == caller => Ok(()),
        Some(owner) => Err(format!(
            "wallet {} belongs to {owner}; {} of {caller} may not {action}",
            wallet.wallet_id,
            role_with_article(stub.creator_role())
        )),
        None => Err(format!(
            "wallet {} belongs to no organization (a record of the chaincode's first version \
             whose owners belong to several organizations); no organization may {action}",
            wallet.wallet_id
        )),
    }
}

/// Invokes `function` with `args` (Fabric's `Invoke`). `Ok` is the response payload
/// (status 200); `Err` is the chaincode's error message (status 500).
pub fn invoke(stub: &mut dyn Stub, function: &str, args: &[String]) -> Result<Vec<u8>, String> {
    match function {
        function::BOOTSTRAP => bootstrap(stub, args),
        function::CREATE_USER => create_user(stub, args),
        function::TRANSFER_TOKENS => transfer_tokens(stub, args),
        function::CREATE_MULTISIG_WALLET => create_multisig_wallet(stub, args),
        function::PROPOSE_TRANSFER => propose_transfer(stub, args),
        function::APPROVE_TRANSFER => decide(stub, args, true),
        function::REJECT_TRANSFER => decide(stub, args, false),
        function::GET_USER => {
            let [id] = expect_args::<1>(function, args)?;
            let user: User = read_json(stub, &user_key(id), "user")?
                .ok_or_else(|| format!("user {id} does not exist"))?;
            serde_json::to_vec(&user).map_err(|e| e.to_string())
        }
        function::GET_WALLET => {
            let [id] = expect_args::<1>(function, args)?;
            let wallet = get_wallet(stub, id)?;
            serde_json::to_vec(&wallet).map_err(|e| e.to_string())
        }
        function::GET_PROPOSAL => {
            let [id] = expect_args::<1>(function, args)?;
            let proposal: Proposal = read_json(stub, &proposal_key(id), "proposal")?
                .ok_or_else(|| format!("proposal {id} does not exist"))?;
            serde_json::to_vec(&proposal).map_err(|e| e.to_string())
        }
        other => Err(format!("Function {other} not found in contract gx")),
    }
}

fn bootstrap(stub: &mut dyn Stub, args: &[String]) -> Result<Vec<u8>, String> {
    let [treasury, supply] = expect_args::<2>(function::BOOTSTRAP, args)?;
    if stub.creator_role() != Role::Admin {
        return Err(format!(
            "Bootstrap requires an admin identity of the organization; the caller's role is {}",
            stub.creator_role().as_str()
        ));
    }
    validate_id("treasuryWalletId", treasury)?;
    let amount = parse_amount("initialSupply", supply)?;
    let existing: Option<SystemRecord> = read_json(stub, SYSTEM_KEY, "system record")?;
    if let Some(sys) = existing {
        return Err(format!(
            "the system is already bootstrapped (treasury wallet {})",
            sys.treasury_wallet_id
        ));
    }
    if stub.get_state(&wallet_key(treasury))?.is_some() {
        return Err(format!("wallet {treasury} already exists"));
    }
    let msp_id = stub.creator_msp_id().to_owned();
    write_json(
        stub,
        SYSTEM_KEY,
        &SystemRecord {
            treasury_wallet_id: treasury.to_owned(),
            initial_supply: amount.to_string(),
            bootstrapped_by: msp_id.clone(),
        },
    )?;
    write_json(
        stub,
        &wallet_key(treasury),
        &Wallet {
            wallet_id: treasury.to_owned(),
            wallet_type: WalletType::Treasury,
            balance: amount.to_string(),
            owners: Vec::new(),
            threshold: 0,
            msp_id: Some(msp_id.clone()),
        },
    )?;
    emit(
        stub,
        &SystemBootstrapped {
            treasury_wallet_id: treasury.to_owned(),
            initial_supply: amount.to_string(),
            msp_id,
        },
    )
}

fn create_user(stub: &mut dyn Stub, args: &[String]) -> Result<Vec<u8>, String> {
    let [user_id, profile_json] = expect_args::<2>(function::CREATE_USER, args)?;
    require_writer(stub, function::CREATE_USER)?;
    validate_id("userId", user_id)?;
    if profile_json.len() > MAX_PROFILE_LEN {
        return Err(format!(
            "profileJson must be at most {MAX_PROFILE_LEN} bytes"
        ));
    }
    let profile: serde_json::Value = serde_json::from_str(profile_json)
        .map_err(|e| format!("profileJson is not valid JSON: {e}"))?;
    if !profile.is_object() {
        return Err("profileJson must be a JSON object".to_owned());
    }
    if stub.get_state(&user_key(user_id))?.is_some() {
        return Err(format!("user {user_id} already exists"));
    }
    if stub.get_state(&wallet_key(user_id))?.is_some() {
        return Err(format!("wallet {user_id} already exists"));
    }
    let msp_id = stub.creator_msp_id().to_owned();
    write_json(
        stub,
        &user_key(user_id),
        &User {
            user_id: user_id.to_owned(),
            wallet_id: user_id.to_owned(),
            profile: profile.clone(),
            msp_id: msp_id.clone(),
        },
    )?;
    write_json(
        stub,
        &wallet_key(user_id),
        &Wallet {
            wallet_id: user_id.to_owned(),
            wallet_type: WalletType::User,
            balance: "0".to_owned(),
            owners: Vec::new(),
            threshold: 0,
            msp_id: Some(msp_id.clone()),
        },
    )?;
    emit(
        stub,
        &UserCreated {
            user_id: user_id.to_owned(),
            wallet_id: user_id.to_owned(),
            profile,
            msp_id,
        },
    )
}

/// Debits `from` and credits `to` in memory; returns the new balances.
fn move_funds(from: &mut Wallet, to: &mut Wallet, amount: u128) -> Result<(u128, u128), String> {
    let from_balance = wallet_balance(from)?;
    let to_balance = wallet_balance(to)?;
    if from_balance < amount {
        return Err(format!(
            "insufficient funds in wallet {}: balance {from_balance}, amount {amount}",
            from.wallet_id
        ));
    }
    let new_from = from_balance - amount;
    let new_to = to_balance
        .checked_add(amount)
        .ok_or_else(|| format!("balance of wallet {} would overflow", to.wallet_id))?;
    from.balance = new_from.to_string();
    to.balance = new_to.to_string();
    Ok((new_from, new_to))
}

/// The arguments shared by TransferTokens and ProposeTransfer — `(id, fromWalletId,
/// toWalletId, amount, memo)` — validated: ids and memo well-formed, amount a positive
/// integer, the two wallets distinct.
fn transfer_args<'a>(
    function: &str,
    id_field: &str,
    args: &'a [String],
) -> Result<(&'a str, &'a str, &'a str, u128, &'a str), String> {
    let [id, from_id, to_id, amount, memo] = expect_args::<5>(function, args)?;
    validate_id(id_field, id)?;
    validate_id("fromWalletId", from_id)?;
    validate_id("toWalletId", to_id)?;
    validate_memo(memo)?;
    let amount = parse_amount("amount", amount)?;
    if amount == 0 {
        return Err("amount must be greater than zero".to_owned());
    }
    if from_id == to_id {
        return Err("fromWalletId and toWalletId must differ".to_owned());
    }
    Ok((id, from_id, to_id, amount, memo))
}

fn transfer_tokens(stub: &mut dyn Stub, args: &[String]) -> Result<Vec<u8>, String> {
    let (transfer_id, from_id, to_id, amount, memo) =
        transfer_args(function::TRANSFER_TOKENS, "transferId", args)?;
    require_writer(stub, function::TRANSFER_TOKENS)?;
    if stub.get_state(&transfer_key(transfer_id))?.is_some() {
        return Err(format!(
            "transfer {transfer_id} already exists: a transferId is used once"
        ));
    }
    let mut from = get_wallet(stub, from_id)?;
    let mut to = get_wallet(stub, to_id)?;
    require_wallet_org(stub, &from, "spend from it")?;
    if from.wallet_type == WalletType::Multisig {
        return Err(format!(
            "wallet {from_id} is a multisig wallet; use ProposeTransfer"
        ));
    }
    let (from_balance, to_balance) = move_funds(&mut from, &mut to, amount)?;
    write_json(stub, &wallet_key(from_id), &from)?;
    write_json(stub, &wallet_key(to_id), &to)?;
    write_json(
        stub,
        &transfer_key(transfer_id),
        &TransferRecord {
            transfer_id: transfer_id.to_owned(),
            from_wallet_id: from_id.to_owned(),
            to_wallet_id: to_id.to_owned(),
            amount: amount.to_string(),
            memo: memo.to_owned(),
        },
    )?;
    emit(
        stub,
        &TokensTransferred {
            transfer_id: transfer_id.to_owned(),
            from_wallet_id: from_id.to_owned(),
            to_wallet_id: to_id.to_owned(),
            amount: amount.to_string(),
            memo: memo.to_owned(),
            from_balance: from_balance.to_string(),
            to_balance: to_balance.to_string(),
        },
    )
}

fn create_multisig_wallet(stub: &mut dyn Stub, args: &[String]) -> Result<Vec<u8>, String> {
    let [wallet_id, owners_json, threshold] =
        expect_args::<3>(function::CREATE_MULTISIG_WALLET, args)?;
    require_writer(stub, function::CREATE_MULTISIG_WALLET)?;
    validate_id("walletId", wallet_id)?;
    let owners: Vec<String> = serde_json::from_str(owners_json)
        .map_err(|e| format!("ownersJson must be a JSON array of user ids: {e}"))?;
    if owners.is_empty() || owners.len() > MAX_OWNERS {
        return Err(format!("a multisig wallet needs 1 to {MAX_OWNERS} owners"));
    }
    for (i, owner) in owners.iter().enumerate() {
        validate_id("owner", owner)?;
        if owners[..i].contains(owner) {
            return Err(format!("owner {owner} is listed twice"));
        }
    }
    let threshold_value = parse_amount("threshold", threshold)?;
    if threshold_value == 0 || threshold_value > owners.len() as u128 {
        return Err(format!(
            "threshold must be between 1 and the number of owners ({}), got {threshold}",
            owners.len()
        ));
    }
    let threshold_value =
        u32::try_from(threshold_value).map_err(|_| "threshold is too large".to_owned())?;
    if stub.get_state(&wallet_key(wallet_id))?.is_some() {
        return Err(format!("wallet {wallet_id} already exists"));
    }
    for owner in &owners {
        if stub.get_state(&user_key(owner))?.is_none() {
            return Err(format!("owner {owner} is not a user"));
        }
    }
    let msp_id = stub.creator_msp_id().to_owned();
    write_json(
        stub,
        &wallet_key(wallet_id),
        &Wallet {
            wallet_id: wallet_id.to_owned(),
            wallet_type: WalletType::Multisig,
            balance: "0".to_owned(),
            owners: owners.clone(),
            threshold: threshold_value,
            msp_id: Some(msp_id.clone()),
        },
    )?;
    emit(
        stub,
        &MultisigWalletCreated {
            wallet_id: wallet_id.to_owned(),
            owners,
            threshold: threshold_value,
            msp_id,
        },
    )
}

fn propose_transfer(stub: &mut dyn Stub, args: &[String]) -> Result<Vec<u8>, String> {
    let (proposal_id, from_id, to_id, amount, memo) =
        transfer_args(function::PROPOSE_TRANSFER, "proposalId", args)?;
    require_writer(stub, function::PROPOSE_TRANSFER)?;
    if stub.get_state(&proposal_key(proposal_id))?.is_some() {
        return Err(format!(
            "proposal {proposal_id} already exists: a proposalId is used once"
        ));
    }
    let from = get_wallet(stub, from_id)?;
    get_wallet(stub, to_id)?;
    require_wallet_org(stub, &from, "propose transfers from it")?;
    if from.wallet_type != WalletType::Multisig {
        return Err(format!("wallet {from_id} is not a multisig wallet"));
    }
    let balance = wallet_balance(&from)?;
    if balance < amount {
        return Err(format!(
            "insufficient funds in wallet {from_id}: balance {balance}, amount {amount}"
        ));
    }
    let proposal = Proposal {
        proposal_id: proposal_id.to_owned(),
        from_wallet_id: from_id.to_owned(),
        to_wallet_id: to_id.to_owned(),
        amount: amount.to_string(),
        memo: memo.to_owned(),
        threshold: from.threshold,
        status: ProposalStatus::Pending,
        approvals: Vec::new(),
        rejections: Vec::new(),
    };
    write_json(stub, &proposal_key(proposal_id), &proposal)?;
    emit(
        stub,
        &TransferProposed {
            proposal_id: proposal_id.to_owned(),
            from_wallet_id: from_id.to_owned(),
            to_wallet_id: to_id.to_owned(),
            amount: amount.to_string(),
            memo: memo.to_owned(),
            threshold: from.threshold,
            owners: from.owners,
        },
    )
}

fn decide(stub: &mut dyn Stub, args: &[String], approve: bool) -> Result<Vec<u8>, String> {
    let function = if approve {
        function::APPROVE_TRANSFER
    } else {
        function::REJECT_TRANSFER
    };
    let [proposal_id, approver_id] = expect_args::<2>(function, args)?;
    require_writer(stub, function)?;
    validate_id("proposalId", proposal_id)?;
    validate_id("approverId", approver_id)?;
    let mut proposal: Proposal = read_json(stub, &proposal_key(proposal_id), "proposal")?
        .ok_or_else(|| format!("proposal {proposal_id} does not exist"))?;
    let mut from = get_wallet(stub, &proposal.from_wallet_id)?;
    require_wallet_org(stub, &from, "decide on its proposals")?;
    if proposal.status != ProposalStatus::Pending {
        return Err(format!(
            "proposal {proposal_id} is no longer pending (status {})",
            proposal.status.as_str()
        ));
    }
    if !from.owners.iter().any(|o| o == approver_id) {
        return Err(format!(
            "{approver_id} is not an owner of wallet {}",
            proposal.from_wallet_id
        ));
    }
    if proposal.approvals.iter().any(|a| a == approver_id)
        || proposal.rejections.iter().any(|a| a == approver_id)
    {
        return Err(format!(
            "{approver_id} has already decided on proposal {proposal_id}"
        ));
    }
    let amount = parse_amount("stored amount", &proposal.amount)?;
    let threshold = proposal.threshold as usize;
    if approve {
        proposal.approvals.push(approver_id.to_owned());
        let mut balances = None;
        if proposal.approvals.len() >= threshold {
            let mut to = get_wallet(stub, &proposal.to_wallet_id)?;
            let moved = move_funds(&mut from, &mut to, amount)?;
            write_json(stub, &wallet_key(&proposal.from_wallet_id), &from)?;
            write_json(stub, &wallet_key(&proposal.to_wallet_id), &to)?;
            proposal.status = ProposalStatus::Executed;
            balances = Some(moved);
        }
        write_json(stub, &proposal_key(proposal_id), &proposal)?;
        emit(
            stub,
            &TransferApproved {
                proposal_id: proposal_id.to_owned(),
                approver_id: approver_id.to_owned(),
                approvals: proposal.approvals,
                threshold: proposal.threshold,
                status: proposal.status,
                executed: balances.is_some(),
                from_wallet_id: proposal.from_wallet_id,
                to_wallet_id: proposal.to_wallet_id,
                amount: proposal.amount,
                from_balance: balances.map(|(from, _)| from.to_string()),
                to_balance: balances.map(|(_, to)| to.to_string()),
            },
        )
    } else {
        proposal.rejections.push(approver_id.to_owned());
        if from.owners.len().saturating_sub(proposal.rejections.len()) < threshold {
            proposal.status = ProposalStatus::Rejected;
        }
        write_json(stub, &proposal_key(proposal_id), &proposal)?;
        emit(
            stub,
            &TransferRejected {
                proposal_id: proposal_id.to_owned(),
                approver_id: approver_id.to_owned(),
                rejections: proposal.rejections,
                threshold: proposal.threshold,
                status: proposal.status,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::BTreeMap;

    use super::contract::GxEvent;
    use super::*;

    /// Who invokes: (MSP id, NodeOU role).
    type Caller = (&'static str, Role);
    const ORG1_CLIENT: Caller = ("Org1MSP", Role::Client);
    const ORG1_ADMIN: Caller = ("Org1MSP", Role::Admin);
    const ORG2_CLIENT: Caller = ("Org2MSP", Role::Client);
    const ORG2_ADMIN: Caller = ("Org2MSP", Role::Admin);

    /// A stub with Fabric's read semantics: reads see the committed map only.
    struct MemStub {
        committed: BTreeMap<String, Vec<u8>>,
        writes: BTreeMap<String, Vec<u8>>,
        event: Option<(String, Vec<u8>)>,
        msp_id: &'static str,
        role: Role,
    }

    impl Stub for MemStub {
        fn get_state(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(self.committed.get(key).cloned())
        }
        fn put_state(&mut self, key: &str, value: Vec<u8>) -> Result<(), String> {
            self.writes.insert(key.to_owned(), value);
            Ok(())
        }
        fn set_event(&mut self, name: &str, payload: Vec<u8>) {
            self.event = Some((name.to_owned(), payload));
        }
        fn creator_msp_id(&self) -> &str {
            self.msp_id
        }
        fn creator_role(&self) -> Role {
            self.role
        }
    }

    struct World {
        state: BTreeMap<String, Vec<u8>>,
        /// Every event emitted, in order.
        events: Vec<(String, Vec<u8>)>,
    }

    impl World {
        fn new() -> Self {
            Self {
                state: BTreeMap::new(),
                events: Vec::new(),
            }
        }

        fn call(
            &mut self,
            (msp_id, role): Caller,
            f: &str,
            args: &[&str],
        ) -> Result<(String, serde_json::Value), String> {
            let mut stub = MemStub {
                committed: self.state.clone(),
                writes: BTreeMap::new(),
                event: None,
                msp_id,
                role,
            };
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let out = invoke(&mut stub, f, &args)?;
            self.state.extend(stub.writes);
            let (name, payload) = stub.event.unwrap_or_default();
            if !name.is_empty() {
                assert_eq!(payload, out, "result equals event payload");
                self.events.push((name.clone(), payload));
            }
            Ok((name, serde_json::from_slice(&out).unwrap()))
        }

        fn run_as(
            &mut self,
            role: Role,
            f: &str,
            args: &[&str],
        ) -> Result<(String, serde_json::Value), String> {
            self.call(("Org1MSP", role), f, args)
        }

        fn run(&mut self, f: &str, args: &[&str]) -> Result<(String, serde_json::Value), String> {
            self.call(ORG1_CLIENT, f, args)
        }

        fn balance(&mut self, wallet: &str) -> String {
            let (_, w) = self.run("GetWallet", &[wallet]).unwrap();
            w["balance"].as_str().unwrap().to_owned()
        }

        /// Stores `value` as-is (a record as an older chaincode version wrote it).
        fn put_raw(&mut self, key: String, value: serde_json::Value) {
            self.state.insert(key, serde_json::to_vec(&value).unwrap());
        }
    }

    fn bootstrapped() -> World {
        let mut w = World::new();
        w.run_as(Role::Admin, "Bootstrap", &["treasury", "1000000"])
            .unwrap();
        w.run(
            "CreateUser",
            &["alice", r#"{"country":"FR","commitment":"ab"}"#],
        )
        .unwrap();
        w.run("CreateUser", &["bob", r#"{"country":"DE"}"#])
            .unwrap();
        w
    }

    /// Bootstrapped by Org1, plus Org2's user dave, Org1's funded multisig `vault`
    /// (alice, bob; threshold 2) and Org1's pending proposal `p1` from it.
    fn two_orgs() -> World {
        let mut w = bootstrapped();
        w.call(ORG2_CLIENT, "CreateUser", &["dave", "{}"]).unwrap();
        w.run("TransferTokens", &["t1", "treasury", "alice", "100", ""])
            .unwrap();
        w.run(
            "CreateMultisigWallet",
            &["vault", r#"["alice","bob"]"#, "2"],
        )
        .unwrap();
        w.run("TransferTokens", &["t2", "treasury", "vault", "50", ""])
            .unwrap();
        w.run("ProposeTransfer", &["p1", "vault", "dave", "10", ""])
            .unwrap();
        w
    }

    #[test]
    fn amounts_are_canonical_decimal_strings() {
        assert_eq!(parse_amount("a", "0"), Ok(0));
        assert_eq!(parse_amount("a", "42"), Ok(42));
        assert_eq!(
            parse_amount("a", "340282366920938463463374607431768211455"),
            Ok(u128::MAX)
        );
        for bad in [
            "",
            "-1",
            "+1",
            "1.5",
            "1e3",
            "007",
            " 1",
            "abc",
            "0x10",
            "340282366920938463463374607431768211456",
            "1234567890123456789012345678901234567890",
        ] {
            assert!(
                parse_amount("amount", bad).is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn bootstrap_needs_admin_and_happens_once() {
        let mut w = World::new();
        let err = w
            .run_as(Role::Client, "Bootstrap", &["treasury", "100"])
            .unwrap_err();
        assert!(err.contains("admin"), "{err}");
        let (name, ev) = w
            .run_as(Role::Admin, "Bootstrap", &["treasury", "100"])
            .unwrap();
        assert_eq!(name, "SystemBootstrapped");
        assert_eq!(ev["treasuryWalletId"], "treasury");
        assert_eq!(ev["initialSupply"], "100");
        assert_eq!(ev["mspId"], "Org1MSP");
        assert_eq!(w.balance("treasury"), "100");
        let (_, treasury) = w.run("GetWallet", &["treasury"]).unwrap();
        assert_eq!(treasury["mspId"], "Org1MSP");
        let err = w
            .run_as(Role::Admin, "Bootstrap", &["treasury2", "100"])
            .unwrap_err();
        assert!(err.contains("already bootstrapped"), "{err}");
        let err = w
            .call(ORG2_ADMIN, "Bootstrap", &["treasury2", "100"])
            .unwrap_err();
        assert!(err.contains("already bootstrapped"), "{err}");
    }

    #[test]
    fn transfers_move_funds_and_refuse_overdrafts() {
        let mut w = bootstrapped();
        let (name, ev) = w
            .run(
                "TransferTokens",
                &["t1", "treasury", "alice", "250", "hello"],
            )
            .unwrap();
        assert_eq!(name, "TokensTransferred");
        assert_eq!(ev["fromBalance"], "999750");
        assert_eq!(ev["toBalance"], "250");
        assert_eq!(ev["memo"], "hello");
        assert_eq!(w.balance("alice"), "250");
        let err = w
            .run("TransferTokens", &["t2", "alice", "bob", "251", ""])
            .unwrap_err();
        assert!(err.contains("insufficient funds"), "{err}");
        let err = w
            .run("TransferTokens", &["t1", "alice", "bob", "1", ""])
            .unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        for (args, needle) in [
            (["t3", "alice", "bob", "0", ""], "greater than zero"),
            (["t3", "alice", "bob", "1.0", ""], "decimal string"),
            (["t3", "alice", "alice", "1", ""], "must differ"),
            (["t3", "alice", "nobody", "1", ""], "does not exist"),
            (["t 3", "alice", "bob", "1", ""], "may contain only"),
        ] {
            let err = w.run("TransferTokens", &args).unwrap_err();
            assert!(err.contains(needle), "{err} should contain {needle}");
        }
        assert_eq!(w.balance("alice"), "250");
        assert_eq!(w.balance("bob"), "0");
    }

    #[test]
    fn users_are_unique_and_profiles_are_objects() {
        let mut w = bootstrapped();
        assert!(
            w.run("CreateUser", &["alice", "{}"])
                .unwrap_err()
                .contains("already exists")
        );
        assert!(
            w.run("CreateUser", &["carol", "[1]"])
                .unwrap_err()
                .contains("JSON object")
        );
        assert!(
            w.run("CreateUser", &["carol", "{"])
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(
            w.run("CreateUser", &["treasury", "{}"])
                .unwrap_err()
                .contains("wallet treasury already exists")
        );
        let (_, user) = w.run("GetUser", &["alice"]).unwrap();
        assert_eq!(user["walletId"], "alice");
        assert_eq!(user["profile"]["country"], "FR");
        assert_eq!(user["mspId"], "Org1MSP");
        let (_, wallet) = w.run("GetWallet", &["alice"]).unwrap();
        assert_eq!(wallet["mspId"], "Org1MSP");
        assert!(
            w.run("GetUser", &["zed"])
                .unwrap_err()
                .contains("does not exist")
        );
        assert!(w.run("Nope", &[]).unwrap_err().contains("not found"));
        assert!(
            w.run("GetUser", &[])
                .unwrap_err()
                .contains("expects 1 argument")
        );
    }

    #[test]
    fn multisig_threshold_executes_the_transfer() {
        let mut w = bootstrapped();
        w.run("CreateUser", &["carol", "{}"]).unwrap();
        let (name, ev) = w
            .run(
                "CreateMultisigWallet",
                &["vault", r#"["alice","bob","carol"]"#, "2"],
            )
            .unwrap();
        assert_eq!(name, "MultisigWalletCreated");
        assert_eq!(ev["threshold"], 2);
        assert_eq!(ev["mspId"], "Org1MSP");
        w.run("TransferTokens", &["fund", "treasury", "vault", "500", ""])
            .unwrap();
        let err = w
            .run("TransferTokens", &["out", "vault", "bob", "1", ""])
            .unwrap_err();
        assert!(err.contains("use ProposeTransfer"), "{err}");
        assert!(
            w.run("ProposeTransfer", &["p1", "vault", "bob", "501", ""])
                .unwrap_err()
                .contains("insufficient")
        );
        let (name, _) = w
            .run("ProposeTransfer", &["p1", "vault", "bob", "200", "rent"])
            .unwrap();
        assert_eq!(name, "TransferProposed");
        let (name, ev) = w.run("ApproveTransfer", &["p1", "alice"]).unwrap();
        assert_eq!(name, "TransferApproved");
        assert_eq!(ev["executed"], false);
        assert_eq!(ev["status"], "PENDING");
        assert!(ev.get("fromBalance").is_none(), "{ev}");
        assert!(
            w.run("ApproveTransfer", &["p1", "alice"])
                .unwrap_err()
                .contains("already decided")
        );
        assert!(
            w.run("RejectTransfer", &["p1", "alice"])
                .unwrap_err()
                .contains("already decided")
        );
        assert!(
            w.run("ApproveTransfer", &["p1", "mallory"])
                .unwrap_err()
                .contains("not an owner")
        );
        let (_, ev) = w.run("ApproveTransfer", &["p1", "carol"]).unwrap();
        assert_eq!(ev["executed"], true);
        assert_eq!(ev["status"], "EXECUTED");
        assert_eq!(ev["fromBalance"], "300");
        assert_eq!(w.balance("vault"), "300");
        assert_eq!(w.balance("bob"), "200");
        let err = w.run("ApproveTransfer", &["p1", "bob"]).unwrap_err();
        assert!(err.contains("no longer pending (status EXECUTED)"), "{err}");
        let (_, p) = w.run("GetProposal", &["p1"]).unwrap();
        assert_eq!(p["approvals"], serde_json::json!(["alice", "carol"]));
    }

    #[test]
    fn rejections_that_make_the_threshold_unreachable_reject() {
        let mut w = bootstrapped();
        w.run(
            "CreateMultisigWallet",
            &["vault", r#"["alice","bob"]"#, "2"],
        )
        .unwrap();
        w.run("TransferTokens", &["fund", "treasury", "vault", "10", ""])
            .unwrap();
        w.run("ProposeTransfer", &["p1", "vault", "alice", "5", ""])
            .unwrap();
        let (name, ev) = w.run("RejectTransfer", &["p1", "bob"]).unwrap();
        assert_eq!(name, "TransferRejected");
        assert_eq!(ev["status"], "REJECTED");
        assert_eq!(w.balance("vault"), "10");
        let err = w.run("ApproveTransfer", &["p1", "alice"]).unwrap_err();
        assert!(err.contains("no longer pending (status REJECTED)"), "{err}");
        for (args, needle) in [
            (vec!["v2", r#"["alice","alice"]"#, "1"], "listed twice"),
            (vec!["v2", r#"["alice"]"#, "2"], "threshold must be"),
            (vec!["v2", r#"["alice"]"#, "0"], "threshold must be"),
            (vec!["v2", r#"["ghost"]"#, "1"], "not a user"),
            (vec!["v2", "alice", "1"], "JSON array"),
            (vec!["vault", r#"["alice"]"#, "1"], "already exists"),
        ] {
            let err = w.run("CreateMultisigWallet", &args).unwrap_err();
            assert!(err.contains(needle), "{err} should contain {needle}");
        }
    }

    #[test]
    fn another_org_cannot_spend_propose_or_decide() {
        let mut w = two_orgs();
        let err = w
            .call(
                ORG2_CLIENT,
                "TransferTokens",
                &["x1", "alice", "dave", "1", ""],
            )
            .unwrap_err();
        assert_eq!(
            err,
            "wallet alice belongs to Org1MSP; a client of Org2MSP may not spend from it"
        );
        let err = w
            .call(
                ORG2_ADMIN,
                "TransferTokens",
                &["x1", "treasury", "dave", "1", ""],
            )
            .unwrap_err();
        assert_eq!(
            err,
            "wallet treasury belongs to Org1MSP; an admin of Org2MSP may not spend from it"
        );
        let err = w
            .call(
                ORG2_CLIENT,
                "ProposeTransfer",
                &["x2", "vault", "dave", "1", ""],
            )
            .unwrap_err();
        assert_eq!(
            err,
            "wallet vault belongs to Org1MSP; a client of Org2MSP may not propose transfers from it"
        );
        for f in ["ApproveTransfer", "RejectTransfer"] {
            let err = w.call(ORG2_CLIENT, f, &["p1", "alice"]).unwrap_err();
            assert_eq!(
                err,
                "wallet vault belongs to Org1MSP; a client of Org2MSP may not decide on its proposals"
            );
        }
        // Nothing changed; Org1 still can.
        assert_eq!(w.balance("alice"), "100");
        assert_eq!(w.balance("vault"), "50");
        let (_, p) = w.run("GetProposal", &["p1"]).unwrap();
        assert_eq!(p["approvals"], serde_json::json!([]));
        // Org1 cannot spend Org2's wallet either.
        w.call(
            ORG1_CLIENT,
            "TransferTokens",
            &["t3", "alice", "dave", "5", ""],
        )
        .unwrap();
        let err = w
            .call(
                ORG1_CLIENT,
                "TransferTokens",
                &["x3", "dave", "alice", "1", ""],
            )
            .unwrap_err();
        assert_eq!(
            err,
            "wallet dave belongs to Org2MSP; a client of Org1MSP may not spend from it"
        );
        w.call(
            ORG2_CLIENT,
            "TransferTokens",
            &["t4", "dave", "alice", "1", ""],
        )
        .unwrap();
        assert_eq!(w.balance("dave"), "4");
    }

    #[test]
    fn anyone_may_pay_into_any_wallet() {
        let mut w = two_orgs();
        // Org2's dave pays into Org1's alice and Org1's multisig vault.
        w.call(ORG2_CLIENT, "CreateUser", &["erin", "{}"]).unwrap();
        w.run("TransferTokens", &["t3", "treasury", "dave", "20", ""])
            .unwrap();
        w.call(
            ORG2_CLIENT,
            "TransferTokens",
            &["t4", "dave", "alice", "5", ""],
        )
        .unwrap();
        w.call(
            ORG2_CLIENT,
            "TransferTokens",
            &["t5", "dave", "vault", "5", ""],
        )
        .unwrap();
        assert_eq!(w.balance("alice"), "105");
        assert_eq!(w.balance("vault"), "55");
        // Org1's multisig pays Org2's dave once its owners approve.
        w.run("ApproveTransfer", &["p1", "alice"]).unwrap();
        let (_, ev) = w.run("ApproveTransfer", &["p1", "bob"]).unwrap();
        assert_eq!(ev["executed"], true);
        assert_eq!(w.balance("dave"), "20");
        // An Org2 wallet may have Org1 users as owners; Org2 decides on its proposals.
        let (_, ev) = w
            .call(
                ORG2_CLIENT,
                "CreateMultisigWallet",
                &["vault2", r#"["alice","dave"]"#, "1"],
            )
            .unwrap();
        assert_eq!(ev["mspId"], "Org2MSP");
        w.run("TransferTokens", &["t6", "alice", "vault2", "3", ""])
            .unwrap();
        w.call(
            ORG2_CLIENT,
            "ProposeTransfer",
            &["q1", "vault2", "erin", "3", ""],
        )
        .unwrap();
        let err = w.run("ApproveTransfer", &["q1", "alice"]).unwrap_err();
        assert!(err.contains("belongs to Org2MSP"), "{err}");
        w.call(ORG2_CLIENT, "ApproveTransfer", &["q1", "alice"])
            .unwrap();
        assert_eq!(w.balance("erin"), "3");
    }

    #[test]
    fn admins_of_the_owning_org_may_act_like_its_clients() {
        let mut w = two_orgs();
        w.call(ORG1_ADMIN, "CreateUser", &["carol", "{}"]).unwrap();
        w.call(
            ORG1_ADMIN,
            "TransferTokens",
            &["t3", "alice", "carol", "7", ""],
        )
        .unwrap();
        w.call(
            ORG1_ADMIN,
            "TransferTokens",
            &["t4", "treasury", "carol", "1", ""],
        )
        .unwrap();
        assert_eq!(w.balance("carol"), "8");
        w.call(
            ORG1_ADMIN,
            "ProposeTransfer",
            &["p2", "vault", "carol", "1", ""],
        )
        .unwrap();
        w.call(ORG1_ADMIN, "ApproveTransfer", &["p2", "alice"])
            .unwrap();
        w.call(ORG1_ADMIN, "RejectTransfer", &["p2", "bob"])
            .unwrap();
        let (_, p) = w.run("GetProposal", &["p2"]).unwrap();
        assert_eq!(p["status"], "REJECTED");
        w.call(
            ORG1_ADMIN,
            "CreateMultisigWallet",
            &["vault3", r#"["carol"]"#, "1"],
        )
        .unwrap();
    }

    #[test]
    fn peer_orderer_and_member_identities_may_only_query() {
        let mut w = two_orgs();
        for role in [Role::Peer, Role::Orderer, Role::Member] {
            for (f, args) in [
                ("CreateUser", vec!["zed", "{}"]),
                ("TransferTokens", vec!["x1", "alice", "bob", "1", ""]),
                ("CreateMultisigWallet", vec!["v9", r#"["alice"]"#, "1"]),
                ("ProposeTransfer", vec!["x2", "vault", "bob", "1", ""]),
                ("ApproveTransfer", vec!["p1", "alice"]),
                ("RejectTransfer", vec!["p1", "alice"]),
            ] {
                let err = w.call(("Org1MSP", role), f, &args).unwrap_err();
                assert_eq!(
                    err,
                    format!(
                        "{f} requires a client or admin identity; the caller is {} of Org1MSP",
                        role_with_article(role)
                    )
                );
            }
            let err = w
                .call(("Org1MSP", role), "Bootstrap", &["t9", "1"])
                .unwrap_err();
            assert!(err.contains("requires an admin"), "{err}");
            for (f, id) in [
                ("GetUser", "alice"),
                ("GetWallet", "alice"),
                ("GetProposal", "p1"),
            ] {
                w.call(("Org1MSP", role), f, &[id]).unwrap();
            }
        }
        assert_eq!(role_with_article(Role::Orderer), "an orderer");
        assert_eq!(w.balance("alice"), "100");
    }

    #[test]
    fn a_used_transfer_id_is_refused_even_after_completion() {
        let mut w = two_orgs();
        // t1 completed (treasury → alice 100); the very same command again is refused...
        let err = w
            .run("TransferTokens", &["t1", "treasury", "alice", "100", ""])
            .unwrap_err();
        assert_eq!(err, "transfer t1 already exists: a transferId is used once");
        // ...and so is the id with other wallets, by either org.
        let err = w
            .run("TransferTokens", &["t1", "alice", "bob", "1", ""])
            .unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        let err = w
            .call(
                ORG2_CLIENT,
                "TransferTokens",
                &["t1", "dave", "alice", "1", ""],
            )
            .unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(w.balance("alice"), "100");
        // A refused transfer does not use up its id.
        w.run("TransferTokens", &["t9", "alice", "bob", "101", ""])
            .unwrap_err();
        w.run("TransferTokens", &["t9", "alice", "bob", "1", ""])
            .unwrap();
    }

    #[test]
    fn a_used_proposal_id_is_refused_pending_or_decided() {
        let mut w = two_orgs();
        let err = w
            .run("ProposeTransfer", &["p1", "vault", "dave", "10", ""])
            .unwrap_err();
        assert_eq!(err, "proposal p1 already exists: a proposalId is used once");
        let (_, ev) = w.run("RejectTransfer", &["p1", "alice"]).unwrap();
        assert_eq!(ev["status"], "REJECTED");
        let err = w
            .run("ProposeTransfer", &["p1", "vault", "bob", "1", ""])
            .unwrap_err();
        assert!(err.contains("already exists"), "{err}");
    }

    #[test]
    fn decisions_come_from_listed_owners_once() {
        let mut w = two_orgs();
        // A user of Org2, an unknown id, a wallet id: none is an owner of vault.
        for who in ["dave", "carol", "treasury"] {
            let err = w.run("ApproveTransfer", &["p1", who]).unwrap_err();
            assert_eq!(err, format!("{who} is not an owner of wallet vault"));
            let err = w.run("RejectTransfer", &["p1", who]).unwrap_err();
            assert_eq!(err, format!("{who} is not an owner of wallet vault"));
        }
        w.run("ApproveTransfer", &["p1", "alice"]).unwrap();
        for f in ["ApproveTransfer", "RejectTransfer"] {
            let err = w.run(f, &["p1", "alice"]).unwrap_err();
            assert_eq!(err, "alice has already decided on proposal p1");
        }
        w.run("RejectTransfer", &["p1", "bob"]).unwrap();
        let err = w.run("ApproveTransfer", &["p1", "bob"]).unwrap_err();
        assert!(err.contains("no longer pending"), "{err}");
        assert_eq!(w.balance("vault"), "50");
        assert!(
            w.run("ApproveTransfer", &["p404", "alice"])
                .unwrap_err()
                .contains("proposal p404 does not exist")
        );
    }

    /// A ledger as the chaincode's first version (1.0) wrote it: no `mspId` on wallets.
    fn legacy_world() -> World {
        let mut w = World::new();
        w.put_raw(
            SYSTEM_KEY.to_owned(),
            serde_json::json!({"treasuryWalletId": "treasury", "initialSupply": "1000", "bootstrappedBy": "Org1MSP"}),
        );
        w.put_raw(
            wallet_key("treasury"),
            serde_json::json!({"walletId": "treasury", "type": "treasury", "balance": "900"}),
        );
        for (user, msp, balance) in [
            ("alice", "Org1MSP", "40"),
            ("bob", "Org1MSP", "0"),
            ("dave", "Org2MSP", "30"),
        ] {
            w.put_raw(
                user_key(user),
                serde_json::json!({"userId": user, "walletId": user, "profile": {}, "mspId": msp}),
            );
            w.put_raw(
                wallet_key(user),
                serde_json::json!({"walletId": user, "type": "user", "balance": balance}),
            );
        }
        w.put_raw(
            wallet_key("vault1"),
            serde_json::json!({"walletId": "vault1", "type": "multisig", "balance": "20", "owners": ["alice", "bob"], "threshold": 1}),
        );
        w.put_raw(
            wallet_key("mixed"),
            serde_json::json!({"walletId": "mixed", "type": "multisig", "balance": "10", "owners": ["alice", "dave"], "threshold": 1}),
        );
        w.put_raw(
            proposal_key("old"),
            serde_json::json!({"proposalId": "old", "fromWalletId": "mixed", "toWalletId": "bob", "amount": "5", "memo": "", "threshold": 1, "status": "PENDING", "approvals": [], "rejections": []}),
        );
        w
    }

    #[test]
    fn records_of_the_first_version_belong_to_the_org_it_recorded() {
        let mut w = legacy_world();
        for (wallet, msp) in [
            ("treasury", Some("Org1MSP")),
            ("alice", Some("Org1MSP")),
            ("dave", Some("Org2MSP")),
            ("vault1", Some("Org1MSP")),
            ("mixed", None),
        ] {
            let (_, v) = w.run("GetWallet", &[wallet]).unwrap();
            let got: Wallet = serde_json::from_value(v).unwrap();
            assert_eq!(got.msp_id.as_deref(), msp, "{wallet}");
        }
        // The treasury: the bootstrapping org.
        w.run("TransferTokens", &["t1", "treasury", "bob", "1", ""])
            .unwrap();
        let err = w
            .call(
                ORG2_CLIENT,
                "TransferTokens",
                &["t2", "treasury", "dave", "1", ""],
            )
            .unwrap_err();
        assert!(err.contains("belongs to Org1MSP"), "{err}");
        // A user wallet: its user's org.
        let err = w
            .run("TransferTokens", &["t3", "dave", "alice", "1", ""])
            .unwrap_err();
        assert_eq!(
            err,
            "wallet dave belongs to Org2MSP; a client of Org1MSP may not spend from it"
        );
        w.call(
            ORG2_CLIENT,
            "TransferTokens",
            &["t3", "dave", "alice", "1", ""],
        )
        .unwrap();
        // A multisig wallet whose owners are all Org1's: Org1's.
        w.run("ProposeTransfer", &["p1", "vault1", "dave", "2", ""])
            .unwrap();
        let err = w
            .call(ORG2_CLIENT, "ApproveTransfer", &["p1", "alice"])
            .unwrap_err();
        assert!(err.contains("belongs to Org1MSP"), "{err}");
        w.run("ApproveTransfer", &["p1", "alice"]).unwrap();
        assert_eq!(w.balance("vault1"), "18");
        // Mixed owners: nobody may spend, propose or decide; paying in still works.
        for caller in [ORG1_CLIENT, ORG2_CLIENT] {
            let err = w
                .call(caller, "ProposeTransfer", &["p2", "mixed", "bob", "1", ""])
                .unwrap_err();
            assert!(
                err.starts_with("wallet mixed belongs to no organization"),
                "{err}"
            );
            assert!(
                err.ends_with("no organization may propose transfers from it"),
                "{err}"
            );
            let err = w
                .call(caller, "ApproveTransfer", &["old", "alice"])
                .unwrap_err();
            assert!(
                err.ends_with("no organization may decide on its proposals"),
                "{err}"
            );
        }
        w.run("TransferTokens", &["t4", "alice", "mixed", "1", ""])
            .unwrap();
        assert_eq!(w.balance("mixed"), "11");
        // Written wallets now record their org; the mixed one still records none.
        for (wallet, msp) in [
            ("treasury", Some("Org1MSP")),
            ("alice", Some("Org1MSP")),
            ("bob", Some("Org1MSP")),
            ("dave", Some("Org2MSP")),
            ("vault1", Some("Org1MSP")),
            ("mixed", None),
        ] {
            let stored: Wallet = serde_json::from_slice(&w.state[&wallet_key(wallet)]).unwrap();
            assert_eq!(stored.msp_id.as_deref(), msp, "{wallet}");
        }
        // The old proposal is still readable.
        let (_, p) = w.run("GetProposal", &["old"]).unwrap();
        let p: Proposal = serde_json::from_value(p).unwrap();
        assert_eq!(p.status, ProposalStatus::Pending);
    }

    #[test]
    fn every_event_and_query_result_round_trips_through_its_contract_type() {
        let mut w = two_orgs();
        w.run("ApproveTransfer", &["p1", "alice"]).unwrap();
        w.run("ApproveTransfer", &["p1", "bob"]).unwrap();
        w.run("ProposeTransfer", &["p2", "vault", "alice", "1", ""])
            .unwrap();
        w.run("RejectTransfer", &["p2", "bob"]).unwrap();
        let mut names = Vec::new();
        for (name, payload) in &w.events {
            let event = GxEvent::decode(name, payload).unwrap();
            assert_eq!(event.name(), name);
            let again = match &event {
                GxEvent::SystemBootstrapped(e) => serde_json::to_value(e),
                GxEvent::UserCreated(e) => serde_json::to_value(e),
                GxEvent::TokensTransferred(e) => serde_json::to_value(e),
                GxEvent::MultisigWalletCreated(e) => serde_json::to_value(e),
                GxEvent::TransferProposed(e) => serde_json::to_value(e),
                GxEvent::TransferApproved(e) => serde_json::to_value(e),
                GxEvent::TransferRejected(e) => serde_json::to_value(e),
            }
            .unwrap();
            let original: serde_json::Value = serde_json::from_slice(payload).unwrap();
            assert_eq!(again, original, "{name}");
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        assert_eq!(
            names,
            [
                contract::event::SYSTEM_BOOTSTRAPPED,
                contract::event::USER_CREATED,
                contract::event::TOKENS_TRANSFERRED,
                contract::event::MULTISIG_WALLET_CREATED,
                contract::event::TRANSFER_PROPOSED,
                contract::event::TRANSFER_APPROVED,
                contract::event::TRANSFER_REJECTED,
            ]
        );
        // Both shapes of TransferApproved: pending (no balances) and executed.
        let approved: Vec<_> = w
            .events
            .iter()
            .filter(|(n, _)| n == contract::event::TRANSFER_APPROVED)
            .map(|(n, p)| GxEvent::decode(n, p).unwrap())
            .collect();
        let [
            GxEvent::TransferApproved(first),
            GxEvent::TransferApproved(second),
        ] = approved.as_slice()
        else {
            panic!("{approved:?}");
        };
        assert!(!first.executed && first.from_balance.is_none());
        assert!(second.executed);
        assert_eq!(second.status, ProposalStatus::Executed);
        assert_eq!(second.from_balance.as_deref(), Some("40"));
        assert_eq!(second.to_balance.as_deref(), Some("10"));
        // Query results.
        for (f, id) in [
            ("GetUser", "dave"),
            ("GetWallet", "vault"),
            ("GetWallet", "alice"),
            ("GetProposal", "p1"),
        ] {
            let (_, v) = w.run(f, &[id]).unwrap();
            let again = match f {
                "GetUser" => {
                    serde_json::to_value(serde_json::from_value::<User>(v.clone()).unwrap())
                }
                "GetWallet" => {
                    serde_json::to_value(serde_json::from_value::<Wallet>(v.clone()).unwrap())
                }
                _ => serde_json::to_value(serde_json::from_value::<Proposal>(v.clone()).unwrap()),
            }
            .unwrap();
            assert_eq!(again, v, "{f}({id})");
        }
        let (_, v) = w.run("GetUser", &["dave"]).unwrap();
        assert_eq!(serde_json::from_value::<User>(v).unwrap().msp_id, "Org2MSP");
        // Unknown names and malformed payloads are told apart.
        assert!(matches!(
            GxEvent::decode("Nope", b"{}"),
            Err(contract::DecodeError::UnknownEvent(_))
        ));
        assert!(matches!(
            GxEvent::decode(contract::event::USER_CREATED, b"{}"),
            Err(contract::DecodeError::Malformed { .. })
        ));
    }
}
