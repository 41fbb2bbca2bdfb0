//! Password files like Mosquitto's `password_file`: one `user:hash` per line.
//!
//! Hashes are Argon2id in PHC string format (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`),
//! each with its own random salt; a plain-text password is never stored.
//! Mosquitto's own hashes are verified too, so its password files work
//! unchanged: `$6$<salt>$<hash>` (SHA-512 of the password then the salt,
//! both base64, Mosquitto 1.6's) and `$7$<iterations>$<salt>$<hash>`
//! (PBKDF2-HMAC-SHA512, Mosquitto 2's). They cannot be converted without
//! the password: the broker replaces one with Argon2id in the file when its
//! user logs in ([`PasswordFile::rehash_on_login`]), `roost passwd upgrade`
//! lists those left, and setting a user's password (`roost passwd add`)
//! replaces one too.
//!
//! Blank lines and lines starting with `#` are ignored on load and dropped on
//! save; a commented-out line that holds an entry is reported in
//! [`PasswordFile::warnings`]. User names must read back as written: not
//! empty, no `:`, no control character, no leading `#`, no leading or
//! trailing whitespace ([`check_user_name`]); `roost passwd add` refuses
//! others before touching the file, and loading refuses a line holding one. [`PasswordFile::save`] writes a temporary file beside the target and
//! renames it over, so a crash leaves either the old or the new file.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::config::PasswdCommand;

/// Cost parameters for new hashes. Verification always uses the parameters
/// stored in each hash, so changing the cost affects only users added later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    /// Memory in KiB (at least 8).
    pub memory_kib: u32,
    /// Number of passes (at least 1).
    pub iterations: u32,
    /// Lanes (at least 1).
    pub parallelism: u32,
}

impl Default for HashCost {
    /// OWASP's recommended Argon2id minimum (19 MiB, 2 passes, 1 lane).
    fn default() -> Self {
        HashCost {
            memory_kib: Params::DEFAULT_M_COST,
            iterations: Params::DEFAULT_T_COST,
            parallelism: Params::DEFAULT_P_COST,
        }
    }
}

/// Upper bounds accepted when loading a hash: a password file is trusted
/// input, but a typo such as `m=190000000` would otherwise turn every login
/// into a 190 GB allocation.
const MAX_MEMORY_KIB: u32 = 1 << 20;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;
/// The most PBKDF2 iterations a `$7$` hash may ask for (Mosquitto uses 101;
/// a million take about a second).
const MAX_PBKDF2_ITERATIONS: u32 = 1_000_000;

/// A Mosquitto hash, decoded.
enum Legacy {
    /// `$6$`: SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// `$7$`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl Legacy {
    /// Decodes a `$6$` or `$7$` hash; `None` for any other format, an
    /// error for a malformed one of these.
    fn parse(stored: &str) -> Option<Result<Legacy, String>> {
        use base64::Engine;
        let b64 = |part: &str, what: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(part)
                .map_err(|_| format!("Mosquitto hash: the {what} is not base64"))
        };
        if let Some(rest) = stored.strip_prefix("$6$") {
            let result = (|| {
                let (salt, hash) = rest
                    .split_once('$')
                    .ok_or("Mosquitto $6$ hash: expected $6$salt$hash")?;
                let (salt, hash) = (b64(salt, "salt")?, b64(hash, "hash")?);
                if hash.len() != 64 {
                    return Err("Mosquitto $6$ hash: the hash is not 64 bytes".to_owned());
                }
                Ok(Legacy::Sha512 { salt, hash })
            })();
            return Some(result);
        }
        let rest = stored.strip_prefix("$7$")?;
        Some((|| {
            let mut parts = rest.splitn(3, '$');
            let (Some(iterations), Some(salt), Some(hash)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err("Mosquitto $7$ hash: expected $7$iterations$salt$hash".to_owned());
            };
            let iterations: u32 = iterations
                .parse()
                .ok()
                .filter(|n| (1..=MAX_PBKDF2_ITERATIONS).contains(n))
                .ok_or(format!(
                    "Mosquitto $7$ hash: iterations must be 1 to {MAX_PBKDF2_ITERATIONS}"
                ))?;
            let (salt, hash) = (b64(salt, "salt")?, b64(hash, "hash")?);
            if hash.is_empty() || hash.len() > 64 {
                return Err("Mosquitto $7$ hash: the hash must be 1 to 64 bytes".to_owned());
            }
            Ok(Legacy::Pbkdf2 {
                iterations,
                salt,
                hash,
            })
        })())
    }

    fn verify(&self, password: &[u8]) -> bool {
        use sha2::Digest;
        use subtle::ConstantTimeEq;
        match self {
            Legacy::Sha512 { salt, hash } => {
                let mut digest = sha2::Sha512::new();
                digest.update(password);
                digest.update(salt);
                bool::from(digest.finalize().as_slice().ct_eq(hash))
            }
            Legacy::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => {
                let mut out = vec![0u8; hash.len()];
                pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, *iterations, &mut out);
                bool::from(out.ct_eq(hash))
            }
        }
    }
}

/// Why a password file operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum PasswdError {
    /// Reading or writing the file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A line of the file is malformed.
    Syntax {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// A user name that could not be written to the file and read back as
    /// the same name.
    InvalidUser {
        /// The name as given.
        user: String,
        /// What is wrong with it.
        problem: UserNameProblem,
    },
    /// [`PasswordFile::add`] for a user who already exists.
    UserExists(String),
    /// [`PasswordFile::remove`] via a command for a user who does not exist.
    NoSuchUser(String),
    /// The hash parameters are out of range or hashing failed.
    Hash(String),
    /// A `passwd` command needs a file and none was given.
    NoFile,
    /// An empty password: anyone who knows the user name could log in.
    EmptyPassword,
}

impl fmt::Display for PasswdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswdError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            PasswdError::Syntax {
                path,
                line,
                problem,
            } => {
                if let Some(path) = path {
                    write!(f, "{}:", path.display())?;
                }
                write!(f, "line {line}: {problem}")
            }
            PasswdError::InvalidUser { user, problem } => {
                write!(f, "invalid user name {user:?}: {problem}")
            }
            PasswdError::UserExists(user) => write!(f, "user {user:?} already exists"),
            PasswdError::NoSuchUser(user) => write!(f, "no user {user:?}"),
            PasswdError::Hash(why) => write!(f, "password hashing failed: {why}"),
            PasswdError::NoFile => {
                f.write_str("no password file: pass --file or set listener.password_file")
            }
            PasswdError::EmptyPassword => f.write_str("the password must not be empty"),
        }
    }
}

impl std::error::Error for PasswdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PasswdError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The users and password hashes of one password file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    /// Sorted so that saving is deterministic and diffs stay small.
    entries: BTreeMap<String, String>,
    cost: HashCost,
    /// Lines that loaded but probably do not mean what was meant.
    warnings: Vec<String>,
    /// The file it was loaded from ([`PasswordFile::load`]), where
    /// [`PasswordFile::rehash_on_login`] writes.
    path: Option<PathBuf>,
}

/// Serializes the rewrites [`PasswordFile::rehash_on_login`] makes (logins
/// are checked on several threads), and holds the files that could not be
/// written, so that each is reported once until it is loaded again.
static REHASH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// What [`PasswordFile::rehash_on_login`] did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Rehash {
    /// The user's hash is not Mosquitto's (or the file was not loaded from
    /// a path): nothing to do.
    NotNeeded,
    /// The file now holds an Argon2id hash for the user.
    Rewritten(PathBuf),
    /// The file on disk no longer holds the hash that was verified (the
    /// user was changed, or already rehashed): left alone.
    Changed,
    /// The file could not be rewritten; reported once per file until it is
    /// loaded again, [`Rehash::Unwritable`] after that.
    Failed(PasswdError),
    /// The file could not be rewritten before either; not tried again.
    Unwritable,
}

/// Why a user name cannot be stored in a password file: each would make
/// the line read back as something else, or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserNameProblem {
    /// The name is empty.
    Empty,
    /// The name contains `:`, which separates the name from the hash.
    Colon,
    /// The name contains a control character (a newline would split the
    /// line, a NUL or escape cannot be typed at a client).
    ControlCharacter,
    /// The name starts with `#`: the line would read back as a comment.
    StartsWithHash,
    /// The name begins or ends with whitespace, which is invisible in the
    /// file and easily lost when it is edited.
    OuterWhitespace,
}

impl fmt::Display for UserNameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UserNameProblem::Empty => "must not be empty",
            UserNameProblem::Colon => "must not contain ':' (it separates the name from the hash)",
            UserNameProblem::ControlCharacter => {
                "must not contain control characters (such as a newline)"
            }
            UserNameProblem::StartsWithHash => {
                "must not start with '#' (the line would read back as a comment)"
            }
            UserNameProblem::OuterWhitespace => "must not begin or end with whitespace",
        })
    }
}

/// Checks that `user` can be written as `user:hash` and read back as the
/// same name.
pub fn check_user_name(user: &str) -> Result<(), UserNameProblem> {
    if user.is_empty() {
        Err(UserNameProblem::Empty)
    } else if user.contains(':') {
        Err(UserNameProblem::Colon)
    } else if user.chars().any(char::is_control) {
        Err(UserNameProblem::ControlCharacter)
    } else if user.starts_with('#') {
        Err(UserNameProblem::StartsWithHash)
    } else if user.starts_with(char::is_whitespace) || user.ends_with(char::is_whitespace) {
        Err(UserNameProblem::OuterWhitespace)
    } else {
        Ok(())
    }
}

/// Whether `user` may appear in a password file; see [`check_user_name`].
pub fn valid_user_name(user: &str) -> bool {
    check_user_name(user).is_ok()
}

impl PasswordFile {
    /// An empty file with the default hash cost.
    pub fn new() -> PasswordFile {
        PasswordFile::default()
    }

    /// Sets the cost of hashes made from now on.
    pub fn set_cost(&mut self, cost: HashCost) {
        self.cost = cost;
    }

    /// Reads and parses a password file.
    pub fn load(path: impl AsRef<Path>) -> Result<PasswordFile, PasswdError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| PasswdError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut file = PasswordFile::parse(&text).map_err(|err| match err {
            PasswdError::Syntax { line, problem, .. } => PasswdError::Syntax {
                path: Some(path.to_path_buf()),
                line,
                problem,
            },
            other => other,
        })?;
        file.path = Some(path.to_path_buf());
        // Loaded again (SIGHUP): a file that could not be written may be
        // writable now.
        if let Ok(mut unwritable) = REHASH.lock() {
            unwritable.retain(|p| p != path);
        }
        Ok(file)
    }

    /// Parses the text of a password file; errors carry the 1-based line.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswdError> {
        let mut file = PasswordFile::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.trim_start().strip_prefix('#') {
                // An older roost wrote users whose name starts with `#` as
                // such lines; say so instead of losing the user silently.
                // (Commenting out a user is also done on purpose, so this
                // is a warning, not an error.)
                if let Some((rest, hash)) = comment.split_once(':') {
                    if check_stored_hash(hash).is_ok() {
                        file.warnings.push(format!(
                            "line {} looks like an entry for user {:?} but is a comment \
                             (a line starting with '#'): that user cannot log in; user names \
                             may not start with '#'",
                            index + 1,
                            format!("#{rest}")
                        ));
                    }
                }
                continue;
            }
            let fail = |problem: String| PasswdError::Syntax {
                path: None,
                line: index + 1,
                problem,
            };
            let Some((user, hash)) = line.split_once(':') else {
                return Err(fail("expected user:hash".to_owned()));
            };
            if let Err(problem) = check_user_name(user) {
                return Err(fail(format!("invalid user name {user:?}: {problem}")));
            }
            check_stored_hash(hash).map_err(fail)?;
            if file
                .entries
                .insert(user.to_owned(), hash.to_owned())
                .is_some()
            {
                return Err(fail(format!("user {user:?} appears twice")));
            }
        }
        Ok(file)
    }

    /// Whether `password` is `user`'s password. Unknown users cost the same
    /// time as known ones, so timing does not reveal which names exist; the
    /// hash comparison itself is constant-time (done by `argon2`).
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(stored) = self.entries.get(user) else {
            // Burn the same work as a real check against a default-cost hash.
            let _ = Argon2::default().hash_password_with_salt(password.as_bytes(), &[0u8; 16]);
            return false;
        };
        if let Some(legacy) = Legacy::parse(stored) {
            return legacy.is_ok_and(|l| l.verify(password.as_bytes()));
        }
        match PasswordHash::new(stored) {
            Ok(hash) => Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Whether `user`'s hash is Mosquitto's (`$6$`/`$7$`).
    pub fn is_legacy(&self, user: &str) -> bool {
        self.entries
            .get(user)
            .is_some_and(|hash| Legacy::parse(hash).is_some())
    }

    /// Call once `password` verified for `user`: if their hash is
    /// Mosquitto's, replaces it with an Argon2id hash of `password` in the
    /// file this was loaded from, so that Mosquitto's weaker hashes leave
    /// the file as users log in. The file is read again (under a lock
    /// shared by every login), and the entry replaced only if it still
    /// holds the hash that verified, so edits made since are kept; it is
    /// written atomically ([`PasswordFile::save`]). This copy is not
    /// changed: the hash it holds keeps working until the next reload.
    pub fn rehash_on_login(&self, user: &str, password: &str) -> Rehash {
        let (Some(path), Some(verified)) = (&self.path, self.entries.get(user)) else {
            return Rehash::NotNeeded;
        };
        if Legacy::parse(verified).is_none() {
            return Rehash::NotNeeded;
        }
        let Ok(mut unwritable) = REHASH.lock() else {
            return Rehash::Unwritable;
        };
        if unwritable.contains(path) {
            return Rehash::Unwritable;
        }
        let result = (|| {
            let mut on_disk = PasswordFile::load_unlocked(path)?;
            if on_disk.entries.get(user) != Some(verified) {
                return Ok(false);
            }
            on_disk.set(user, password)?;
            on_disk.save(path)?;
            Ok(true)
        })();
        match result {
            Ok(true) => Rehash::Rewritten(path.clone()),
            Ok(false) => Rehash::Changed,
            Err(e) => {
                unwritable.push(path.clone());
                Rehash::Failed(e)
            }
        }
    }

    /// [`PasswordFile::load`] without touching [`REHASH`] (whose lock the
    /// caller holds).
    fn load_unlocked(path: &Path) -> Result<PasswordFile, PasswdError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswdError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        PasswordFile::parse(&text)
    }

    /// Adds a new user; fails if the user exists.
    pub fn add(&mut self, user: &str, password: &str) -> Result<(), PasswdError> {
        if self.entries.contains_key(user) {
            return Err(PasswdError::UserExists(user.to_owned()));
        }
        self.set(user, password)
    }

    /// Adds a user or replaces their password. Names that could not be
    /// read back from the file are refused ([`check_user_name`]).
    pub fn set(&mut self, user: &str, password: &str) -> Result<(), PasswdError> {
        check_user_name(user).map_err(|problem| PasswdError::InvalidUser {
            user: user.to_owned(),
            problem,
        })?;
        let hash = self.hash(password)?;
        self.entries.insert(user.to_owned(), hash);
        Ok(())
    }

    /// Removes a user; returns whether they existed.
    pub fn remove(&mut self, user: &str) -> bool {
        self.entries.remove(user).is_some()
    }

    /// Lines of the loaded file that are not errors but probably not what
    /// was meant, each naming its line: a commented-out line that holds an
    /// entry (as an older roost wrote for a user named `#…`). The runtime
    /// logs them when it loads the file.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Users whose hash is still Mosquitto's (`$6$`/`$7$`), sorted: they
    /// log in, and become Argon2id once their password is set again.
    pub fn legacy_users(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(_, hash)| hash.starts_with("$6$") || hash.starts_with("$7$"))
            .map(|(user, _)| user.as_str())
    }

    /// Whether `user` has an entry.
    pub fn contains(&self, user: &str) -> bool {
        self.entries.contains_key(user)
    }

    /// The user names, sorted.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The file's text: one `user:hash` line per user.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (user, hash) in &self.entries {
            out.push_str(user);
            out.push(':');
            out.push_str(hash);
            out.push('\n');
        }
        out
    }

    /// Writes the file atomically: a temporary file in the same directory,
    /// flushed to disk, then renamed over `path`. On Unix the file is created
    /// readable by its owner only.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), PasswdError> {
        let path = path.as_ref();
        let io = |source| PasswdError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| io(std::io::Error::other("not a file path")))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);

        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let result = (|| {
            let mut file = options.open(&tmp)?;
            file.write_all(self.to_text().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(err) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(err));
        }
        // Make the rename itself durable; not every platform can open a
        // directory, and the file is already complete either way.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }

    fn hash(&self, password: &str) -> Result<String, PasswdError> {
        let params = Params::new(
            self.cost.memory_kib,
            self.cost.iterations,
            self.cost.parallelism,
            None,
        )
        .map_err(|e| PasswdError::Hash(e.to_string()))?;
        let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let hash: PasswordHash = hasher
            .hash_password(password.as_bytes())
            .map_err(|e| PasswdError::Hash(e.to_string()))?;
        Ok(hash.to_string())
    }
}

/// Checks that a stored hash is an Argon2 PHC string with sane parameters.
fn check_stored_hash(hash: &str) -> Result<(), String> {
    if let Some(legacy) = Legacy::parse(hash) {
        return legacy.map(|_| ());
    }
    let parsed = PasswordHash::new(hash).map_err(|e| format!("invalid PHC hash: {e}"))?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "unsupported hash algorithm {:?} (expected argon2id)",
            parsed.algorithm.as_str()
        ));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err("hash lacks a salt or an output".to_owned());
    }
    let params =
        Params::try_from(&parsed).map_err(|e| format!("invalid argon2 parameters: {e}"))?;
    if params.m_cost() > MAX_MEMORY_KIB
        || params.t_cost() > MAX_ITERATIONS
        || params.p_cost() > MAX_PARALLELISM
    {
        return Err(format!(
            "argon2 parameters too costly (at most m={MAX_MEMORY_KIB}, t={MAX_ITERATIONS}, p={MAX_PARALLELISM})"
        ));
    }
    Ok(())
}

/// Runs a `roost passwd …` command. `default_file` is used when the command
/// has no `--file` (the runtime passes the configured password file);
/// `read_password` is asked for the password when `--password` is absent
/// (the runtime prompts on the terminal). Returns a line to print.
pub fn run_command(
    command: &PasswdCommand,
    default_file: Option<&Path>,
    read_password: impl FnOnce() -> std::io::Result<String>,
) -> Result<String, PasswdError> {
    let file_of = |file: &Option<PathBuf>| {
        file.as_deref()
            .or(default_file)
            .map(Path::to_path_buf)
            .ok_or(PasswdError::NoFile)
    };
    match command {
        PasswdCommand::Add {
            user,
            password,
            file,
            ..
        } => {
            // Refused before anything is read or written: the file is
            // never touched for a name it could not hold.
            check_user_name(user).map_err(|problem| PasswdError::InvalidUser {
                user: user.clone(),
                problem,
            })?;
            let path = file_of(file)?;
            let mut passwords = match PasswordFile::load(&path) {
                Ok(existing) => existing,
                Err(PasswdError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    PasswordFile::new()
                }
                Err(err) => return Err(err),
            };
            let password = match password {
                Some(p) => p.clone(),
                None => read_password().map_err(|source| PasswdError::Io {
                    path: PathBuf::from("<password input>"),
                    source,
                })?,
            };
            if password.is_empty() {
                return Err(PasswdError::EmptyPassword);
            }
            let replaced = passwords.contains(user);
            passwords.set(user, &password)?;
            passwords.save(&path)?;
            let verb = if replaced { "updated" } else { "added" };
            Ok(format!("{verb} user {user:?} in {}", path.display()))
        }
        PasswdCommand::Upgrade { file } => {
            let path = file_of(file)?;
            let passwords = PasswordFile::load(&path)?;
            let legacy: Vec<&str> = passwords.legacy_users().collect();
            Ok(if legacy.is_empty() {
                format!("{}: every user has an Argon2id hash", path.display())
            } else {
                format!(
                    "{}: {} of {} users still have a Mosquitto hash ($6$/$7$), which works \
                     but cannot be converted without the password: the broker makes it \
                     Argon2id at the user's next login (if it may write the file), or set it \
                     again with `roost passwd add USER`: {}",
                    path.display(),
                    legacy.len(),
                    passwords.len(),
                    legacy.join(", ")
                )
            })
        }
        PasswdCommand::Rm { user, file } => {
            let path = file_of(file)?;
            let mut passwords = PasswordFile::load(&path)?;
            if !passwords.remove(user) {
                return Err(PasswdError::NoSuchUser(user.clone()));
            }
            passwords.save(&path)?;
            Ok(format!("removed user {user:?} from {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debug builds hash slowly; tests use the smallest cost argon2 accepts.
    pub(super) fn cheap() -> PasswordFile {
        let mut file = PasswordFile::new();
        file.set_cost(HashCost {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        });
        file
    }

    pub(super) fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("roost-passwd-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join("passwords")
    }

    #[test]
    fn add_verify_remove() {
        let mut file = cheap();
        file.add("alice", "s3cret").expect("add");
        assert!(file.verify("alice", "s3cret"));
        assert!(!file.verify("alice", "S3cret"));
        assert!(!file.verify("bob", "s3cret"));
        assert!(matches!(
            file.add("alice", "x"),
            Err(PasswdError::UserExists(_))
        ));
        file.set("alice", "new").expect("set");
        assert!(file.verify("alice", "new"));
        assert!(!file.verify("alice", "s3cret"));
        assert!(file.remove("alice"));
        assert!(!file.remove("alice"));
        assert!(!file.verify("alice", "new"));
    }

    #[test]
    fn hashes_are_salted_phc_strings_never_plain_text() {
        let mut file = cheap();
        file.add("a", "same").expect("add");
        file.add("b", "same").expect("add");
        let text = file.to_text();
        assert!(!text.contains("same"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let hash_a = lines[0].strip_prefix("a:").expect("a first");
        let hash_b = lines[1].strip_prefix("b:").expect("b second");
        assert!(hash_a.starts_with("$argon2id$v=19$m=8,t=1,p=1$"));
        assert_ne!(hash_a, hash_b, "each hash has its own salt");
    }

    #[test]
    fn default_cost_round_trips() {
        let mut file = PasswordFile::new();
        file.add("u", "pw").expect("add");
        assert!(file.to_text().contains("$argon2id$v=19$m=19456,t=2,p=1$"));
        let reparsed = PasswordFile::parse(&file.to_text()).expect("parse");
        assert!(reparsed.verify("u", "pw"));
    }

    #[test]
    fn bad_user_names_are_rejected() {
        let mut file = cheap();
        for user in ["", "a:b", "a\nb", "tab\t", "nul\0"] {
            assert!(
                matches!(file.set(user, "p"), Err(PasswdError::InvalidUser { .. })),
                "{user:?}"
            );
        }
        file.set("ok user ü", "p")
            .expect("spaces and unicode are fine");
    }

    #[test]
    fn names_that_cannot_round_trip_are_refused_with_the_reason() {
        let mut file = cheap();
        for (user, problem) in [
            ("", UserNameProblem::Empty),
            ("a:b", UserNameProblem::Colon),
            ("a\nb", UserNameProblem::ControlCharacter),
            ("a\rb", UserNameProblem::ControlCharacter),
            ("nul\0", UserNameProblem::ControlCharacter),
            ("del\x7f", UserNameProblem::ControlCharacter),
            ("#", UserNameProblem::StartsWithHash),
            ("#admin", UserNameProblem::StartsWithHash),
            (" alice", UserNameProblem::OuterWhitespace),
            ("alice ", UserNameProblem::OuterWhitespace),
            ("tab\t", UserNameProblem::ControlCharacter),
            ("\u{a0}nbsp", UserNameProblem::OuterWhitespace),
        ] {
            assert_eq!(check_user_name(user), Err(problem), "{user:?}");
            assert!(!valid_user_name(user), "{user:?}");
            match file.set(user, "p") {
                Err(PasswdError::InvalidUser {
                    user: u,
                    problem: p,
                }) => {
                    assert_eq!((u.as_str(), p), (user, problem));
                }
                other => panic!("{user:?}: {other:?}"),
            }
        }
        assert!(file.is_empty());
        // `#` inside a name, and spaces inside one, round-trip.
        for user in ["a#b", "ok user ü", "x%c"] {
            assert_eq!(check_user_name(user), Ok(()));
            file.set(user, "p").expect("valid");
        }
        let reread = PasswordFile::parse(&file.to_text()).expect("reads back");
        assert_eq!(
            reread.users().collect::<Vec<_>>(),
            file.users().collect::<Vec<_>>()
        );
        let err = PasswdError::InvalidUser {
            user: "#".into(),
            problem: UserNameProblem::StartsWithHash,
        };
        assert_eq!(
            err.to_string(),
            "invalid user name \"#\": must not start with '#' (the line would read back as a comment)"
        );
    }

    #[test]
    fn load_refuses_names_with_outer_whitespace_and_reports_commented_entries() {
        let mut good = cheap();
        good.add("alice", "pw").expect("add");
        let entry = good.to_text();
        let hash = entry.trim_end().strip_prefix("alice:").expect("entry");

        let err = PasswordFile::parse(&format!("{entry} bob:{hash}\n")).expect_err("indented");
        assert_eq!(
            err.to_string(),
            "line 2: invalid user name \" bob\": must not begin or end with whitespace"
        );
        let err = PasswordFile::parse(&format!("bob :{hash}\n")).expect_err("trailing space");
        assert!(
            err.to_string()
                .starts_with("line 1: invalid user name \"bob \""),
            "{err}"
        );

        // A line an older roost wrote for user `#` (or `#x`) is a comment:
        // it still loads, the user is not there, and the file says why.
        let text = format!("# a real comment: with a colon\n{entry}#:{hash}\n#x:{hash}\n");
        let file = PasswordFile::parse(&text).expect("comments are not errors");
        assert_eq!(file.users().collect::<Vec<_>>(), ["alice"]);
        assert_eq!(
            file.warnings(),
            [
                "line 3 looks like an entry for user \"#\" but is a comment (a line starting \
                 with '#'): that user cannot log in; user names may not start with '#'",
                "line 4 looks like an entry for user \"#x\" but is a comment (a line starting \
                 with '#'): that user cannot log in; user names may not start with '#'",
            ]
        );
        assert!(good.warnings().is_empty());
    }

    #[test]
    fn passwd_add_hash_user_fails_and_writes_nothing() {
        let path = temp_path("hash-user");
        for user in ["#", "#admin", "", "a:b", "a\nb", " a", "a "] {
            let add = PasswdCommand::Add {
                user: user.into(),
                password: Some("pw".into()),
                password_stdin: false,
                file: Some(path.clone()),
            };
            let err = run_command(&add, None, || unreachable!()).expect_err(user);
            assert!(
                matches!(err, PasswdError::InvalidUser { .. }),
                "{user:?}: {err}"
            );
            assert!(!path.exists(), "{user:?}: the file was written");
        }
        // An existing file is left byte for byte as it was.
        let mut file = cheap();
        file.add("alice", "pw").expect("add");
        file.save(&path).expect("save");
        let before = std::fs::read(&path).expect("read");
        let add = PasswdCommand::Add {
            user: "#".into(),
            password: Some("pw".into()),
            password_stdin: false,
            file: Some(path.clone()),
        };
        run_command(&add, None, || unreachable!()).expect_err("#");
        assert_eq!(std::fs::read(&path).expect("read"), before);
        std::fs::remove_dir_all(path.parent().expect("dir")).expect("cleanup");
    }

    #[test]
    fn parse_errors_name_the_line() {
        let mut good = cheap();
        good.add("alice", "pw").expect("add");
        let text = format!("# comment\n\n{}bob\n", good.to_text());
        let err = PasswordFile::parse(&text).expect_err("no colon");
        assert_eq!(err.to_string(), "line 4: expected user:hash");

        let err = PasswordFile::parse("carol:plaintext\n").expect_err("not a hash");
        assert!(err.to_string().starts_with("line 1: invalid PHC hash"));

        // A Mosquitto hash loads when well formed; this one is cut short.
        let err = PasswordFile::parse("dave:$6$abc$def\n").expect_err("mosquitto");
        assert!(err.to_string().contains("Mosquitto"), "{err}");

        let dup = format!("{0}{0}", good.to_text());
        let err = PasswordFile::parse(&dup).expect_err("dup");
        assert_eq!(err.to_string(), "line 2: user \"alice\" appears twice");

        let huge = good.to_text().replace("m=8,", "m=4000000,");
        let err = PasswordFile::parse(&huge).expect_err("too costly");
        assert!(err.to_string().contains("too costly"), "{err}");
    }

    #[test]
    fn save_is_atomic_and_load_reads_it_back() {
        let path = temp_path("save");
        let mut file = cheap();
        file.add("alice", "pw1").expect("add");
        file.add("bob", "pw2").expect("add");
        file.save(&path).expect("save");
        let loaded = PasswordFile::load(&path).expect("load");
        assert!(loaded.verify("alice", "pw1"));
        assert!(loaded.verify("bob", "pw2"));
        assert_eq!(loaded.users().collect::<Vec<_>>(), ["alice", "bob"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("passwords")]);
        std::fs::remove_dir_all(path.parent().expect("dir")).expect("cleanup");
    }

    #[test]
    fn load_errors_name_the_file() {
        let err = PasswordFile::load("/nonexistent/pw").expect_err("missing");
        assert!(err.to_string().starts_with("/nonexistent/pw: "));
    }

    #[test]
    fn commands_add_and_remove() {
        let path = temp_path("cmd");
        let add = PasswdCommand::Add {
            user: "eve".into(),
            password: None,
            password_stdin: false,
            file: Some(path.clone()),
        };
        let msg = run_command(&add, None, || Ok("prompted".into())).expect("add");
        assert!(msg.starts_with("added user \"eve\""));
        assert!(
            PasswordFile::load(&path)
                .expect("load")
                .verify("eve", "prompted")
        );

        let add_again = PasswdCommand::Add {
            user: "eve".into(),
            password: Some("other".into()),
            password_stdin: false,
            file: None,
        };
        let msg = run_command(&add_again, Some(&path), || unreachable!()).expect("update");
        assert!(msg.starts_with("updated"));
        assert!(
            PasswordFile::load(&path)
                .expect("load")
                .verify("eve", "other")
        );

        let rm = PasswdCommand::Rm {
            user: "eve".into(),
            file: None,
        };
        run_command(&rm, Some(&path), || unreachable!()).expect("rm");
        assert!(PasswordFile::load(&path).expect("load").is_empty());
        assert!(matches!(
            run_command(&rm, Some(&path), || unreachable!()),
            Err(PasswdError::NoSuchUser(_))
        ));
        assert!(matches!(
            run_command(&rm, None, || unreachable!()),
            Err(PasswdError::NoFile)
        ));
        std::fs::remove_dir_all(path.parent().expect("dir")).expect("cleanup");
    }
}

#[cfg(test)]
mod mosquitto_hashes {
    use super::tests::{cheap, temp_path};
    use super::*;

    /// Made by Mosquitto 2.0's `mosquitto_passwd -b` (`$7$`, the default)
    /// and `mosquitto_passwd -H sha512 -b` (`$6$`).
    const MOSQUITTO_FILE: &str = "\
alice:$7$101$u+SpBLk8niUd64v2$ZsqF9eKg7XSMoGn3cnvHHlubL+gXWoqFaveaklG6He8SiwmI0mIuLmGA+8P6GaIWbjn63v9VJmDBFS+zihdduA==
bob:$6$v5nGpfgvzgT6X7zV$UtP2mAoe2Hipoy2FzQJ7xyf2iHW5bU2/3DnOwKcCc4FU+Sbf+jE1PE6pp/oFNXHegmEcQZBXN0p/UnreK3kPuQ==
";

    #[test]
    fn mosquitto_hashes_verify() {
        let file = PasswordFile::parse(MOSQUITTO_FILE).expect("Mosquitto's file loads");
        assert!(file.verify("alice", "secret"));
        assert!(!file.verify("alice", "secret "));
        assert!(!file.verify("alice", "hunter2"));
        assert!(file.verify("bob", "hunter2"));
        assert!(!file.verify("bob", "secret"));
        assert_eq!(file.legacy_users().collect::<Vec<_>>(), ["alice", "bob"]);
    }

    #[test]
    fn a_mosquitto_hash_is_rehashed_on_login() {
        let path = temp_path("rehash");
        std::fs::write(&path, MOSQUITTO_FILE).expect("write");
        let file = PasswordFile::load(&path).expect("load");
        assert!(file.verify("alice", "secret"));
        assert!(matches!(
            file.rehash_on_login("alice", "secret"),
            Rehash::Rewritten(ref p) if *p == path
        ));
        let after = PasswordFile::load(&path).expect("reload");
        assert!(!after.is_legacy("alice"));
        assert!(after.entries["alice"].starts_with("$argon2id$"));
        assert!(after.verify("alice", "secret"));
        assert!(!after.verify("alice", "hunter2"));
        // Only the user who logged in; bob keeps Mosquitto's hash.
        assert_eq!(after.legacy_users().collect::<Vec<_>>(), ["bob"]);
        // The copy in memory still holds the old hash, which still works;
        // the file already changed, so a second login leaves it alone.
        assert!(file.verify("alice", "secret"));
        assert!(matches!(
            file.rehash_on_login("alice", "secret"),
            Rehash::Changed
        ));
        assert_eq!(PasswordFile::load(&path).expect("load"), after);
        // An Argon2id hash needs nothing.
        assert!(matches!(
            after.rehash_on_login("alice", "secret"),
            Rehash::NotNeeded
        ));
        std::fs::remove_dir_all(path.parent().expect("dir")).expect("cleanup");
    }

    #[test]
    fn rehashing_keeps_edits_made_since_the_load() {
        let path = temp_path("rehash-edited");
        std::fs::write(&path, MOSQUITTO_FILE).expect("write");
        let file = PasswordFile::load(&path).expect("load");
        // The operator replaces bob's password after the broker loaded it.
        let mut edited = cheap();
        edited.entries = file.entries.clone();
        edited.set("bob", "new one").expect("set");
        edited.save(&path).expect("save");
        assert!(matches!(
            file.rehash_on_login("bob", "hunter2"),
            Rehash::Changed
        ));
        let on_disk = PasswordFile::load(&path).expect("load");
        assert!(on_disk.verify("bob", "new one"));
        assert!(!on_disk.verify("bob", "hunter2"));
        std::fs::remove_dir_all(path.parent().expect("dir")).expect("cleanup");
    }

    #[test]
    fn a_file_that_cannot_be_rewritten_is_reported_once() {
        let path = temp_path("rehash-gone");
        std::fs::write(&path, MOSQUITTO_FILE).expect("write");
        let file = PasswordFile::load(&path).expect("load");
        std::fs::remove_dir_all(path.parent().expect("dir")).expect("remove");
        let failed = file.rehash_on_login("alice", "secret");
        assert!(
            matches!(failed, Rehash::Failed(PasswdError::Io { .. })),
            "{failed:?}"
        );
        assert!(matches!(
            file.rehash_on_login("bob", "hunter2"),
            Rehash::Unwritable
        ));
        // Loading the file again (a reload) tries again.
        std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
        std::fs::write(&path, MOSQUITTO_FILE).expect("write");
        let file = PasswordFile::load(&path).expect("load");
        assert!(matches!(
            file.rehash_on_login("bob", "hunter2"),
            Rehash::Rewritten(_)
        ));
        std::fs::remove_dir_all(path.parent().expect("dir")).expect("cleanup");
    }

    #[test]
    fn setting_a_password_replaces_a_mosquitto_hash() {
        let mut file = PasswordFile::parse(MOSQUITTO_FILE).expect("loads");
        file.set_cost(HashCost {
            memory_kib: 8,
            iterations: 1,
            parallelism: 1,
        });
        file.set("bob", "new one").expect("set");
        assert_eq!(file.legacy_users().collect::<Vec<_>>(), ["alice"]);
        assert!(file.verify("bob", "new one"));
        assert!(file.to_text().contains("bob:$argon2id$"));
    }

    #[test]
    fn malformed_mosquitto_hashes_are_refused_with_the_reason() {
        for (line, why) in [
            ("a:$6$nosalt", "expected $6$salt$hash"),
            ("a:$6$!!$AAAA", "salt is not base64"),
            ("a:$6$AAAA$AAAA", "not 64 bytes"),
            ("a:$7$0$AAAA$AAAA", "iterations must be"),
            ("a:$7$99999999$AAAA$AAAA", "iterations must be"),
            ("a:$7$101$AAAA", "expected $7$iterations$salt$hash"),
        ] {
            let e = PasswordFile::parse(line).expect_err(line).to_string();
            assert!(e.contains(why), "{line}: {e}");
        }
    }

    #[test]
    fn empty_passwords_are_refused() {
        let dir = std::env::temp_dir().join(format!("roost-passwd-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("pw");
        for (password, read) in [(Some(String::new()), ""), (None, "")] {
            let add = PasswdCommand::Add {
                user: "alice".into(),
                password,
                password_stdin: true,
                file: Some(path.clone()),
            };
            let e = run_command(&add, None, || Ok(read.to_owned())).expect_err("empty");
            assert!(matches!(e, PasswdError::EmptyPassword), "{e}");
            assert!(!path.exists());
        }
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn upgrade_lists_the_users_left_on_mosquitto_hashes() {
        let dir = std::env::temp_dir().join(format!("roost-passwd-up-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("pw");
        std::fs::write(&path, MOSQUITTO_FILE).expect("write");
        let upgrade = PasswdCommand::Upgrade {
            file: Some(path.clone()),
        };
        let out = run_command(&upgrade, None, || unreachable!()).expect("upgrade");
        assert!(
            out.contains("2 of 2 users") && out.ends_with("alice, bob"),
            "{out}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
