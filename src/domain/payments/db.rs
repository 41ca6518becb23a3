//! [`PaymentsDb`]: the demo payments database in one SQLite file.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rand::distr::{Alphanumeric, SampleString};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::error::PaymentsError;
use super::model::{
    MerchantAccount, NewTicket, Refund, RefundOutcome, RefundRequest, SeedReport, Settlement,
    Ticket, TicketOutcome, Transaction, REFUNDABLE_STATUSES,
};
use super::seed::{SeedError, SeedFile};
use crate::merchant::MerchantId;
use crate::sqlite::SqliteError;

/// Default time a call waits for another connection's lock before failing with
/// [`PaymentsError::Busy`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest accepted idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;

/// How many settlements [`PaymentsDb::merchant_account`] lists.
pub const RECENT_SETTLEMENTS: usize = 5;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS merchants (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    business_name      TEXT NOT NULL,
    email              TEXT NOT NULL,
    status             TEXT NOT NULL,
    kyc_status         TEXT NOT NULL,
    settlement_account TEXT NOT NULL,
    settlement_cycle   TEXT NOT NULL,
    settlement_hold    TEXT,
    balance            INTEGER NOT NULL,
    pending_settlement INTEGER NOT NULL,
    settled_this_month INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transactions (
    id              TEXT PRIMARY KEY,
    merchant_id     TEXT NOT NULL REFERENCES merchants(id),
    customer_name   TEXT NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount > 0),
    currency        TEXT NOT NULL,
    status          TEXT NOT NULL,
    method          TEXT NOT NULL,
    error_code      TEXT,
    created_at      TEXT NOT NULL,
    settlement_id   TEXT,
    settled_at      TEXT,
    refunded_amount INTEGER NOT NULL DEFAULT 0 CHECK (refunded_amount BETWEEN 0 AND amount)
);
CREATE INDEX IF NOT EXISTS transactions_by_merchant ON transactions (merchant_id, created_at);
CREATE TABLE IF NOT EXISTS settlements (
    id            TEXT PRIMARY KEY,
    merchant_id   TEXT NOT NULL REFERENCES merchants(id),
    settled_at    TEXT NOT NULL,
    amount        INTEGER NOT NULL,
    payment_count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS settlements_by_merchant ON settlements (merchant_id, settled_at);
CREATE TABLE IF NOT EXISTS refunds (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    merchant_id     TEXT NOT NULL REFERENCES merchants(id),
    transaction_id  TEXT NOT NULL REFERENCES transactions(id),
    amount          INTEGER NOT NULL CHECK (amount > 0),
    currency        TEXT NOT NULL,
    reason          TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS refunds_by_merchant ON refunds (merchant_id, transaction_id);
CREATE TABLE IF NOT EXISTS tickets (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    merchant_id     TEXT NOT NULL REFERENCES merchants(id),
    subject         TEXT NOT NULL,
    description     TEXT NOT NULL,
    priority        TEXT NOT NULL,
    type            TEXT NOT NULL,
    transaction_id  TEXT REFERENCES transactions(id),
    status          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    session_id      TEXT NOT NULL,
    idempotency_key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS tickets_by_merchant ON tickets (merchant_id);
";

const TXN_COLUMNS: &str = "id, merchant_id, customer_name, amount, currency, status, method, \
     error_code, created_at, settlement_id, settled_at, refunded_amount";
const REFUND_COLUMNS: &str = "id, merchant_id, transaction_id, amount, currency, reason, status, \
     created_at, session_id, idempotency_key";
const TICKET_COLUMNS: &str = "id, merchant_id, subject, description, priority, type, \
     transaction_id, status, created_at, session_id";

/// The demo payments database in one SQLite file (`payments.db` in the data directory).
///
/// Tables: `merchants`, `transactions`, `settlements` (loaded from the seed), and `refunds` and
/// `tickets` (written by the tools). Every query that reads or writes a merchant's data takes
/// the merchant id and filters on it in SQL, so another merchant's rows are never read.
///
/// Invariants kept by the schema itself, whatever the caller does:
///
/// * `0 <= refunded_amount <= amount` on every payment (a `CHECK` constraint), so no sequence
///   of refunds can refund more than was paid;
/// * every refund has an idempotency key, `UNIQUE` across all refunds, so a key refunds at
///   most once — across retries, concurrent callers, processes and restarts.
///
/// Concurrency: one connection behind a mutex per `PaymentsDb`; every write is a single
/// `BEGIN IMMEDIATE` transaction (check, insert and update together), so other connections
/// and processes wait up to the busy timeout instead of interleaving. WAL mode lets readers in
/// other processes run beside a writer. Calls block; async callers run them on a blocking
/// thread (the tools do).
pub struct PaymentsDb {
    path: PathBuf,
    busy_timeout: Duration,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for PaymentsDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsDb")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A fresh id: `prefix` and 14 random ASCII letters or digits (like `rfnd_Wq8Lm2Xc5Vt1Ra`).
fn new_id(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::rng(), 14)
    )
}

fn row_to_transaction(row: &Row<'_>) -> rusqlite::Result<Transaction> {
    let status: String = row.get(5)?;
    let amount: i64 = row.get(3)?;
    let refunded_amount: i64 = row.get(11)?;
    Ok(Transaction {
        id: row.get(0)?,
        merchant_id: row.get(1)?,
        customer_name: row.get(2)?,
        amount,
        currency: row.get(4)?,
        refundable_amount: Transaction::refundable(&status, amount, refunded_amount),
        status,
        method: row.get(6)?,
        error_code: row.get(7)?,
        created_at: row.get(8)?,
        settlement_id: row.get(9)?,
        settled_at: row.get(10)?,
        refunded_amount,
    })
}

fn row_to_refund(row: &Row<'_>) -> rusqlite::Result<Refund> {
    Ok(Refund {
        id: row.get(0)?,
        merchant_id: row.get(1)?,
        transaction_id: row.get(2)?,
        amount: row.get(3)?,
        currency: row.get(4)?,
        reason: row.get(5)?,
        status: row.get(6)?,
        created_at: row.get(7)?,
        session_id: row.get(8)?,
        idempotency_key: row.get(9)?,
    })
}

/// A ticket row, with priority and type still as text (decoded by [`decode_ticket`]).
type TicketRow = (Ticket, String, String);

fn row_to_ticket(row: &Row<'_>) -> rusqlite::Result<TicketRow> {
    let ticket = Ticket {
        id: row.get(0)?,
        merchant_id: row.get(1)?,
        subject: row.get(2)?,
        description: row.get(3)?,
        priority: super::model::TicketPriority::Low,
        ticket_type: super::model::TicketType::Other,
        transaction_id: row.get(6)?,
        status: row.get(7)?,
        created_at: row.get(8)?,
        session_id: row.get(9)?,
    };
    Ok((ticket, row.get(4)?, row.get(5)?))
}

fn decode_ticket((mut ticket, priority, kind): TicketRow) -> Result<Ticket, PaymentsError> {
    ticket.priority = priority
        .parse()
        .map_err(|source| PaymentsError::CorruptValue {
            what: format!("ticket {}", ticket.id),
            source,
        })?;
    ticket.ticket_type = kind.parse().map_err(|source| PaymentsError::CorruptValue {
        what: format!("ticket {}", ticket.id),
        source,
    })?;
    Ok(ticket)
}

fn check_key(key: &str) -> Result<(), PaymentsError> {
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(PaymentsError::InvalidInput(format!(
            "the idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes long"
        )));
    }
    Ok(())
}

impl PaymentsDb {
    /// File name of the database inside the data directory.
    pub const FILE_NAME: &'static str = "payments.db";

    /// Opens (creating if needed, with parent directories and tables) the database at `path`,
    /// waiting up to [`BUSY_TIMEOUT`] for locks held by other connections.
    pub fn open(path: &Path) -> Result<Self, PaymentsError> {
        Self::open_with_timeout(path, BUSY_TIMEOUT)
    }

    /// Like [`PaymentsDb::open`] with a different busy timeout.
    pub fn open_with_timeout(path: &Path, busy_timeout: Duration) -> Result<Self, PaymentsError> {
        let mut conn = crate::sqlite::OpenOptions::new()
            .busy_timeout(busy_timeout)
            .foreign_keys(true)
            .open(path)?;
        crate::sqlite::apply_schema(&mut conn, SCHEMA)
            .map_err(|e| SqliteError::from_rusqlite(path, busy_timeout, e))?;
        Ok(PaymentsDb {
            path: path.to_path_buf(),
            busy_timeout,
            conn: Mutex::new(conn),
        })
    }

    /// Opens `data_dir/payments.db`.
    pub fn open_in_dir(data_dir: &Path) -> Result<Self, PaymentsError> {
        Self::open(&data_dir.join(Self::FILE_NAME))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        crate::sqlite::lock(&self.conn)
    }

    fn sql(&self, e: rusqlite::Error) -> PaymentsError {
        SqliteError::from_rusqlite(&self.path, self.busy_timeout, e).into()
    }

    /// Loads a seed file (see `data/payments/seed.json`) in one transaction. Idempotent: rows
    /// whose id already exists are left untouched, so refunds and tickets made since survive a
    /// second load. The whole file is validated before anything is written.
    pub fn seed_from_file(&self, path: &Path) -> Result<SeedReport, PaymentsError> {
        let seed_err = |source: SeedError| PaymentsError::Seed {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(|e| seed_err(SeedError::Read(e)))?;
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        let known: HashSet<String> = {
            let mut stmt = tx
                .prepare("SELECT id FROM merchants")
                .map_err(|e| self.sql(e))?;
            let ids = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| self.sql(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.sql(e))?;
            ids
        };
        let seed = SeedFile::parse(&text, &known).map_err(seed_err)?;
        let settlements = seed.settlements().map_err(seed_err)?;
        let mut report = SeedReport::default();
        for m in &seed.merchants {
            report.merchants_added += tx
                .execute(
                    "INSERT OR IGNORE INTO merchants (id, name, business_name, email, status, \
                     kyc_status, settlement_account, settlement_cycle, settlement_hold, balance, \
                     pending_settlement, settled_this_month) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    params![
                        m.id,
                        m.name,
                        m.business_name,
                        m.email,
                        m.status,
                        m.kyc_status,
                        m.settlement_account,
                        m.settlement_cycle,
                        m.settlement_hold,
                        m.balance,
                        m.pending_settlement,
                        m.settled_this_month
                    ],
                )
                .map_err(|e| self.sql(e))?;
        }
        for t in &seed.transactions {
            report.transactions_added += tx
                .execute(
                    &format!(
                        "INSERT OR IGNORE INTO transactions ({TXN_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
                    ),
                    params![
                        t.id,
                        t.merchant_id,
                        t.customer_name,
                        t.amount,
                        t.currency,
                        t.status,
                        t.method,
                        t.error_code,
                        t.created_at,
                        t.settlement_id,
                        t.settled_at,
                        t.refunded_amount
                    ],
                )
                .map_err(|e| self.sql(e))?;
        }
        for s in &settlements {
            report.settlements_added += tx
                .execute(
                    "INSERT OR IGNORE INTO settlements (id, merchant_id, settled_at, amount, \
                     payment_count) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![s.id, s.merchant_id, s.settled_at, s.amount, s.payment_count],
                )
                .map_err(|e| self.sql(e))?;
        }
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(report)
    }

    /// The payment `id` of `merchant`, or `None` when it does not exist or belongs to another
    /// merchant.
    pub fn transaction(
        &self,
        merchant: &MerchantId,
        id: &str,
    ) -> Result<Option<Transaction>, PaymentsError> {
        let conn = self.lock();
        Self::transaction_in(&conn, merchant, id).map_err(|e| self.sql(e))
    }

    fn transaction_in(
        conn: &Connection,
        merchant: &MerchantId,
        id: &str,
    ) -> rusqlite::Result<Option<Transaction>> {
        conn.prepare_cached(&format!(
            "SELECT {TXN_COLUMNS} FROM transactions WHERE id = ?1 AND merchant_id = ?2"
        ))?
        .query_row(params![id, merchant.as_str()], row_to_transaction)
        .optional()
    }

    /// `merchant`'s account with its [`RECENT_SETTLEMENTS`] latest settlements, or `None` for
    /// an unknown merchant.
    pub fn merchant_account(
        &self,
        merchant: &MerchantId,
    ) -> Result<Option<MerchantAccount>, PaymentsError> {
        let conn = self.lock();
        let account = conn
            .prepare_cached(
                "SELECT id, name, business_name, email, status, kyc_status, settlement_account, \
                 settlement_cycle, settlement_hold, balance, pending_settlement, \
                 settled_this_month FROM merchants WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.query_row([merchant.as_str()], |r| {
                    Ok(MerchantAccount {
                        merchant_id: r.get(0)?,
                        name: r.get(1)?,
                        business_name: r.get(2)?,
                        email: r.get(3)?,
                        status: r.get(4)?,
                        kyc_status: r.get(5)?,
                        settlement_account: r.get(6)?,
                        settlement_cycle: r.get(7)?,
                        settlement_hold: r.get(8)?,
                        currency: "INR".into(),
                        balance: r.get(9)?,
                        pending_settlement: r.get(10)?,
                        settled_this_month: r.get(11)?,
                        recent_settlements: Vec::new(),
                    })
                })
                .optional()
            })
            .map_err(|e| self.sql(e))?;
        let Some(mut account) = account else {
            return Ok(None);
        };
        account.recent_settlements = conn
            .prepare_cached(
                "SELECT id, settled_at, amount, payment_count FROM settlements \
                 WHERE merchant_id = ?1 ORDER BY settled_at DESC, id LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![merchant.as_str(), RECENT_SETTLEMENTS as i64], |r| {
                    Ok(Settlement {
                        settlement_id: r.get(0)?,
                        settled_at: r.get(1)?,
                        amount: r.get(2)?,
                        payment_count: r.get(3)?,
                    })
                })?
                .collect()
            })
            .map_err(|e| self.sql(e))?;
        Ok(Some(account))
    }

    /// Refunds `request.amount` on one of `merchant`'s payments, at most once per
    /// `idempotency_key`.
    ///
    /// In one transaction: if the key was used before, the earlier refund is returned
    /// (`replayed: true`) and nothing changes — or, when the key was used for a different
    /// payment or amount, the call is refused. Otherwise the payment must belong to
    /// `merchant` ([`PaymentsError::NotFound`] if not), be captured or partially refunded, and
    /// have at least `amount` left to refund ([`PaymentsError::Refused`] if not); then the
    /// refund is stored, the payment's `refunded_amount` and status are updated, and the
    /// amount is deducted from the merchant's balance (a refund on a settled payment is
    /// recovered from the next settlement, so the balance may go negative).
    pub fn refund(
        &self,
        merchant: &MerchantId,
        session_id: &str,
        idempotency_key: &str,
        request: &RefundRequest,
    ) -> Result<RefundOutcome, PaymentsError> {
        check_key(idempotency_key)?;
        if request.amount < 1 {
            return Err(PaymentsError::InvalidInput(
                "the refund amount must be at least 1 rupee".into(),
            ));
        }
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        if let Some(earlier) = Self::refund_by_key(&tx, idempotency_key).map_err(|e| self.sql(e))? {
            if earlier.merchant_id != merchant.as_str()
                || earlier.transaction_id != request.transaction_id
                || earlier.amount != request.amount
            {
                return Err(PaymentsError::Refused(
                    "this approval was already used for a different refund, so it cannot \
                     authorise this one; ask for a new approval"
                        .into(),
                ));
            }
            let transaction = Self::transaction_in(&tx, merchant, &earlier.transaction_id)
                .map_err(|e| self.sql(e))?
                .ok_or_else(|| {
                    PaymentsError::Corrupt(format!("refund {} names a missing payment", earlier.id))
                })?;
            return Ok(RefundOutcome {
                refund: earlier,
                transaction,
                replayed: true,
            });
        }
        let txn = Self::transaction_in(&tx, merchant, &request.transaction_id)
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| PaymentsError::NotFound {
                what: "transaction",
                id: request.transaction_id.clone(),
            })?;
        if !REFUNDABLE_STATUSES.contains(&txn.status.as_str()) {
            let why = match txn.status.as_str() {
                "failed" => "it failed, so no money was collected".to_owned(),
                "authorized" | "created" => {
                    "it was never captured (an authorized payment is released automatically, not refunded)"
                        .to_owned()
                }
                "refunded" => "it has already been refunded in full".to_owned(),
                other => format!("its status is {other}"),
            };
            return Err(PaymentsError::Refused(format!(
                "payment {} cannot be refunded because {why}",
                txn.id
            )));
        }
        if request.amount > txn.refundable_amount {
            return Err(PaymentsError::Refused(format!(
                "cannot refund {} {} on payment {}: only {} {} of {} {} is still refundable \
                 ({} {} already refunded)",
                txn.currency,
                request.amount,
                txn.id,
                txn.currency,
                txn.refundable_amount,
                txn.currency,
                txn.amount,
                txn.currency,
                txn.refunded_amount
            )));
        }
        let refund = Refund {
            id: new_id("rfnd_"),
            merchant_id: merchant.as_str().to_owned(),
            transaction_id: txn.id.clone(),
            amount: request.amount,
            currency: txn.currency.clone(),
            reason: request.reason.clone(),
            status: "processed".into(),
            created_at: now(),
            session_id: session_id.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
        };
        let write = || -> rusqlite::Result<()> {
            tx.execute(
                &format!(
                    "INSERT INTO refunds ({REFUND_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ),
                params![
                    refund.id,
                    refund.merchant_id,
                    refund.transaction_id,
                    refund.amount,
                    refund.currency,
                    refund.reason,
                    refund.status,
                    refund.created_at,
                    refund.session_id,
                    refund.idempotency_key
                ],
            )?;
            tx.execute(
                "UPDATE transactions SET refunded_amount = refunded_amount + ?1, \
                 status = CASE WHEN refunded_amount + ?1 >= amount THEN 'refunded' \
                          ELSE 'partially_refunded' END \
                 WHERE id = ?2 AND merchant_id = ?3",
                params![refund.amount, refund.transaction_id, refund.merchant_id],
            )?;
            tx.execute(
                "UPDATE merchants SET balance = balance - ?1, \
                 pending_settlement = CASE WHEN settlement_hold IS NULL \
                     THEN MAX(balance - ?1, 0) ELSE pending_settlement END \
                 WHERE id = ?2",
                params![refund.amount, refund.merchant_id],
            )?;
            Ok(())
        };
        write().map_err(|e| self.sql(e))?;
        let transaction = Self::transaction_in(&tx, merchant, &refund.transaction_id)
            .map_err(|e| self.sql(e))?
            .ok_or_else(|| PaymentsError::Corrupt("the refunded payment vanished".into()))?;
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(RefundOutcome {
            refund,
            transaction,
            replayed: false,
        })
    }

    fn refund_by_key(conn: &Connection, key: &str) -> rusqlite::Result<Option<Refund>> {
        conn.prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE idempotency_key = ?1"
        ))?
        .query_row([key], row_to_refund)
        .optional()
    }

    /// Creates a support ticket for `merchant`. With an idempotency key, a second call with
    /// the same key returns the first ticket (`replayed: true`) instead of creating another.
    /// A `transaction_id` must name one of `merchant`'s payments ([`PaymentsError::NotFound`]
    /// otherwise).
    pub fn create_ticket(
        &self,
        merchant: &MerchantId,
        session_id: &str,
        idempotency_key: Option<&str>,
        new: &NewTicket,
    ) -> Result<TicketOutcome, PaymentsError> {
        if let Some(key) = idempotency_key {
            check_key(key)?;
        }
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql(e))?;
        if let Some(key) = idempotency_key {
            let earlier = tx
                .prepare_cached(&format!(
                    "SELECT {TICKET_COLUMNS} FROM tickets WHERE idempotency_key = ?1"
                ))
                .and_then(|mut s| s.query_row([key], row_to_ticket).optional())
                .map_err(|e| self.sql(e))?;
            if let Some(earlier) = earlier {
                let ticket = decode_ticket(earlier)?;
                if ticket.merchant_id != merchant.as_str() {
                    return Err(PaymentsError::Refused(
                        "this idempotency key was already used for another request".into(),
                    ));
                }
                return Ok(TicketOutcome {
                    ticket,
                    replayed: true,
                });
            }
        }
        if let Some(txn_id) = &new.transaction_id {
            if Self::transaction_in(&tx, merchant, txn_id)
                .map_err(|e| self.sql(e))?
                .is_none()
            {
                return Err(PaymentsError::NotFound {
                    what: "transaction",
                    id: txn_id.clone(),
                });
            }
        }
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM merchants WHERE id = ?1)",
                [merchant.as_str()],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))?;
        if !exists {
            return Err(PaymentsError::NotFound {
                what: "merchant account",
                id: merchant.to_string(),
            });
        }
        let ticket = Ticket {
            id: new_id("tkt_"),
            merchant_id: merchant.as_str().to_owned(),
            subject: new.subject.clone(),
            description: new.description.clone(),
            priority: new.priority,
            ticket_type: new.ticket_type,
            transaction_id: new.transaction_id.clone(),
            status: "open".into(),
            created_at: now(),
            session_id: session_id.to_owned(),
        };
        tx.execute(
            &format!(
                "INSERT INTO tickets ({TICKET_COLUMNS}, idempotency_key) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ),
            params![
                ticket.id,
                ticket.merchant_id,
                ticket.subject,
                ticket.description,
                ticket.priority.as_str(),
                ticket.ticket_type.as_str(),
                ticket.transaction_id,
                ticket.status,
                ticket.created_at,
                ticket.session_id,
                idempotency_key
            ],
        )
        .map_err(|e| self.sql(e))?;
        tx.commit().map_err(|e| self.sql(e))?;
        Ok(TicketOutcome {
            ticket,
            replayed: false,
        })
    }

    /// `merchant`'s tickets, oldest first.
    pub fn list_tickets(&self, merchant: &MerchantId) -> Result<Vec<Ticket>, PaymentsError> {
        let conn = self.lock();
        let rows: Vec<TicketRow> = conn
            .prepare_cached(&format!(
                "SELECT {TICKET_COLUMNS} FROM tickets WHERE merchant_id = ?1 ORDER BY seq"
            ))
            .and_then(|mut s| s.query_map([merchant.as_str()], row_to_ticket)?.collect())
            .map_err(|e| self.sql(e))?;
        rows.into_iter().map(decode_ticket).collect()
    }

    /// `merchant`'s refunds, oldest first.
    pub fn list_refunds(&self, merchant: &MerchantId) -> Result<Vec<Refund>, PaymentsError> {
        let conn = self.lock();
        conn.prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant_id = ?1 ORDER BY seq"
        ))
        .and_then(|mut s| s.query_map([merchant.as_str()], row_to_refund)?.collect())
        .map_err(|e| self.sql(e))
    }

    /// The refunds created on one of `merchant`'s payments, oldest first (empty for another
    /// merchant's payment).
    pub fn refunds_for_transaction(
        &self,
        merchant: &MerchantId,
        transaction_id: &str,
    ) -> Result<Vec<Refund>, PaymentsError> {
        let conn = self.lock();
        conn.prepare_cached(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE merchant_id = ?1 AND transaction_id = ?2 \
             ORDER BY seq"
        ))
        .and_then(|mut s| {
            s.query_map(params![merchant.as_str(), transaction_id], row_to_refund)?
                .collect()
        })
        .map_err(|e| self.sql(e))
    }
}
