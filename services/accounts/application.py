"""The accounts application: portal logins and sessions, installer accounts, and the residents'
master accounts that follow topology's apartments.

Passwords are hashed and tokens digested here (the `Credentials` adapter), so the domain only ever
sees digests. Token checks read the sessions read model, never the event store.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from concierge import context
from concierge.lockout import Lockout, Rule
from concierge.store import ServiceApplication
from concierge.vault import Personal, PersonalData, Vault
from contracts import checked
from contracts.accounts import (
    CODE_DIGITS,
    CODE_SECONDS,
    EMAIL_FIXED,
    FAMILY_SIP_PREFIX,
    FREE_FAMILY_MEMBERS,
    GENERATED_PASSWORD_LENGTH,
    INSTALLER_ROLES,
    INSTALLER_SETTINGS_DEFAULTS,
    LOCKOUT_SECONDS,
    LOCKOUT_WINDOW_SECONDS,
    LOGIN_LIMITS,
    RESET_LIMITS,
    RESET_LINK_SECONDS,
    SIP_DIGITS,
    AccountEdit,
    DistributorCreate,
    FamilyMemberCreate,
    FamilyMemberEdit,
    InstallerCreate,
    InstallerSettings,
    LoginVerify,
    PasswordChange,
    PasswordForgotten,
    PasswordReset,
    PropertyManagerCreate,
    PropertyManagerEdit,
    SubInstallerCreate,
    SubInstallerEdit,
)
from contracts.errors import (
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    TooManyAttempts,
    Unauthorized,
)
from services.accounts.domain import (
    DISTRIBUTOR,
    INSTALLER,
    PROPERTY_MANAGER,
    SUB_INSTALLER,
    FamilySip,
    MasterAccount,
    PortalAccount,
)
from services.accounts.projections import AccountsViews
from services.accounts.security import Credentials

log = logging.getLogger(__name__)

# Topology events the master-account policy reacts to; ApartmentDeleted closes the account.
TOPOLOGY_EVENTS = frozenset({"ResidentAdded", "ResidentEdited", "ApartmentReset",
                             "ApartmentDeleted"})
CONTACT_FIELDS = ("first_name", "last_name", "email")

# One message for an unknown username and a wrong password, so a login cannot probe usernames.
LOGIN_FAILED = "Wrong username or password."
NOT_SIGNED_IN = "Not signed in: the token is unknown or the session was closed."
EXPIRED = "The session has expired."
ONLY_DISTRIBUTORS = "Only a distributor can create installer accounts."
ONLY_INSTALLERS = "Only the main installer account manages sub-installer accounts."
NO_SUB_INSTALLER = "No such sub-installer account."
# Letters and digits that read alike in no font (no 0/O, 1/l/I): a password typed from an email.
PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def generated_password(length: int = GENERATED_PASSWORD_LENGTH) -> str:
    """A password the platform makes: letters and digits, at least one of each kind."""
    while True:
        password = "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))
        if (any(c.islower() for c in password) and any(c.isupper() for c in password)
                and any(c.isdigit() for c in password)):
            return password


CODE_FAILED = "Wrong or expired code: log in again for a new one."
LOCKED_OUT = (f"Too many failed logins: try again in {LOCKOUT_SECONDS // 60} minutes.")
TOO_MANY_LINKS = (f"Too many password links asked for: try again in {LOCKOUT_SECONDS // 60} "
                  "minutes.")
BAD_LINK = "This link is not valid: it was used, replaced or has expired."


def login_rules(username: str, address: str | None,
                limits: Mapping[str, int] = LOGIN_LIMITS) -> list[tuple[str, Rule]]:
    """The keys one failed login counts against (concierge.lockout), whether or not the
    username exists."""
    name = username.strip().lower()
    where = address or "unknown"

    def rule(limit: int) -> Rule:
        return Rule(limit, timedelta(seconds=LOCKOUT_WINDOW_SECONDS),
                    timedelta(seconds=LOCKOUT_SECONDS))

    return [(f"pair:{name}|{where}", rule(limits["pair"])),
            (f"user:{name}", rule(limits["user"])),
            (f"addr:{where}", rule(limits["addr"]))]


def _code_digest(challenge: str, code: str) -> str:
    """A login code as its challenge keeps it: only together with the challenge token."""
    return hashlib.sha256(f"{challenge}:{code}".encode()).hexdigest()


def _masked(email: str) -> str:
    """lily@example.com -> l***@example.com: enough to know which mailbox to look in."""
    name, _, domain = email.partition("@")
    return f"{name[:1]}***@{domain}" if domain else "***"


def _rule(limit: int) -> Rule:
    return Rule(limit, timedelta(seconds=LOCKOUT_WINDOW_SECONDS),
                timedelta(seconds=LOCKOUT_SECONDS))


def password_subject(account_id: UUID) -> str:
    """The vault subject of one issued password: its own key, destroyed once it is not needed."""
    return f"password:{account_id}:{secrets.token_hex(8)}"


def _taken(username: str) -> Conflict:
    message = f"The username {username!r} is already taken."
    return Conflict(message, {"username": [message]})


PROFILE_FIELDS = ("first_name", "last_name", "language", "password_reminder", "two_factor",
                  "communities")


def _profile(values: Mapping[str, Any], partial: bool = False) -> dict[str, Any]:
    """A property manager's profile from a request (or its current one); ids as text."""
    profile = {k: values[k] for k in PROFILE_FIELDS if k in values}
    if "communities" in profile:
        profile["communities"] = [{**a, "community_id": str(a["community_id"])}
                                  for a in profile["communities"]]
    if not partial:
        missing = [k for k in PROFILE_FIELDS if k not in profile]
        assert not missing, missing
    return profile


def _settings_view(account: PortalAccount) -> dict[str, Any]:
    stored = account.installer_settings or {}
    view = copy.deepcopy(INSTALLER_SETTINGS_DEFAULTS)
    for key, value in stored.items():
        view[key] = {**view[key], **value} if isinstance(view.get(key), dict) else value
    return view


def _family_view(account: MasterAccount, member_id: str) -> dict[str, Any]:
    member = account.family.get(member_id) or {}
    return {"id": member_id, "apartment_id": str(account.apartment_id),
            "master_account_id": str(account.id), "sip": member.get("sip"),
            "first_name": member.get("first_name"), "last_name": member.get("last_name"),
            "email": member.get("email"), "mobile": member.get("mobile")}


def _property_manager_view(account: PortalAccount) -> dict[str, Any]:
    profile = account.property_manager or {}
    return {"id": str(account.id), "email": account.email, "installer_id":
            str(account.created_by), **{k: profile.get(k) for k in PROFILE_FIELDS},
            "created_at": account.created_on.isoformat()}


def _sub_installer_view(account: PortalAccount) -> dict[str, Any]:
    return {"id": str(account.id), "username": account.username, "email": account.email,
            "phone": account.phone, "installer_id": str(account.created_by),
            "created_at": account.created_on.isoformat()}


def _uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value))
    except ValueError:
        return None


def tenant_account(attributes: dict[str, Any]) -> str:
    """The key of a master account's tenant (each reset starts the next; concierge.vault)."""
    return f"master:{attributes['originator_id']}:{int(attributes.get('resets') or 0)}"


# A resident's and its family members' personal fields, sealed with their tenant's key: the
# APT's reset or delete destroys it (AccountsKeys), and no route, replay or rebuild reads them.
RESIDENT_FIELDS = ("first_name", "last_name", "email", "previous_email", "member")
PERSONAL_DATA = PersonalData({
    f"MasterAccount.{name}": Personal(tenant_account, RESIDENT_FIELDS)
    for name in ("MasterAccountCreated", "MasterAccountContactChanged", "MasterAccountReset",
                 "FamilyMemberAdded", "FamilyMemberEdited")})


class AccountsApplication(ServiceApplication):
    """Commands and queries of the accounts context."""

    service_name = "accounts"
    personal_data = PERSONAL_DATA

    def __init__(
        self,
        env: dict[str, str] | None = None,
        engine: Any = None,
        credentials: Credentials | None = None,
        token_ttl: timedelta = timedelta(hours=24),
        clock: Callable[[], datetime] | None = None,
        login_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.credentials = credentials or Credentials()
        self.login_limits = dict(login_limits or LOGIN_LIMITS)
        self.token_ttl = token_ttl
        self.clock = clock or (lambda: datetime.now(UTC))
        # The read models' queries; none without a read side.
        self.views = AccountsViews(engine) if engine is not None else None
        # Issued passwords, sealed until notify has emailed them (crypto-shredding); the
        # store's vault, made with it below.
        self.vault: Vault | None = None
        # Which of the named communities are not the calling installer's (topology over RPC,
        # set when wired); None: nothing to ask (accounts alone, in a test).
        self.unknown_communities: Callable[[list[str]], list[str]] | None = None
        # Failed logins, counted across replicas; the same clock as the sessions'.
        self.lockout = Lockout(engine, self.clock) if engine is not None else None
        # Made now, with the hasher every account's hash was made with: the first login of an
        # unknown username must not cost a hash more than the others.
        self._decoy_hash = self.credentials.hash_password(secrets.token_urlsafe(16))
        super().__init__(env=env, engine=engine)
        if engine is not None:
            self.vault = self.shared_vault()

    # -- portal accounts -------------------------------------------------------------------
    def ensure_distributor(self, username: str, password: str) -> str:
        """The bootstrap distributor, created once: a restart or a second replica adds nothing.

        An existing account is left as it is (its password included).
        """
        checked(DistributorCreate, {"username": username, "password": password})
        account_id = PortalAccount.id_for_username(username)

        def command() -> tuple[PortalAccount, list[Any]]:
            # Run again by the chassis when another replica created it first: then it exists.
            existing = self._portal_account(account_id)
            if existing is not None:
                return existing, []
            distributor = PortalAccount.open_distributor(
                username, self.credentials.hash_password(password))
            return distributor, [distributor]

        account = self.execute(command)
        if account.role != DISTRIBUTOR:
            raise _taken(username)
        return str(account_id)

    def create_installer(self, payload: Mapping[str, Any], distributor_id: str | None) -> str:
        """A distributor creates an installer's login; returns the new account id.

        `distributor_id` is the calling account (the call context carries no account id).
        """
        request = checked(InstallerCreate, payload)
        caller = context.current()
        distributor_uuid = _uuid(distributor_id) if distributor_id else None
        if caller.role != DISTRIBUTOR or distributor_uuid is None:
            raise Forbidden(ONLY_DISTRIBUTORS)
        username, password = request["username"], request["password"]
        # Hashed before the command: it is slow, and commands run one unit at a time. The
        # username is checked inside the command, so a retry with its Idempotency-Key gets
        # the first answer rather than "taken".
        password_hash = self.credentials.hash_password(password)

        def command() -> tuple[str, list[Any]]:
            distributor = self._portal_account(distributor_uuid)
            if distributor is None or distributor.role != DISTRIBUTOR:
                raise Forbidden(ONLY_DISTRIBUTORS)
            if self._portal_account(PortalAccount.id_for_username(username)) is not None:
                raise _taken(username)
            installer = distributor.create_installer(username, request["email"], password_hash)
            return str(installer.id), [installer]

        return self.execute(command)

    # -- sub-installers (manual "Sub-Installer Account") ------------------------------------
    def create_sub_installer(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The calling installer's new sub-account; its login password is made here, sealed
        for notify's welcome email, and never answered, logged or published."""
        request = checked(SubInstallerCreate, payload)
        installer_id = self._main_installer()
        username = request["username"]
        account_id = PortalAccount.id_for_username(username)
        password = generated_password()
        password_hash = self.credentials.hash_password(password)
        subject = password_subject(account_id)
        sealed = self._vault().seal(subject, password)

        def command() -> tuple[dict[str, Any], list[Any]]:
            installer = self._portal_account(installer_id)
            if installer is None or installer.role != INSTALLER:
                raise Forbidden(ONLY_INSTALLERS)
            if self._portal_account(account_id) is not None:
                raise _taken(username)
            sub = installer.create_sub_installer(username, request["email"], request.get("phone"),
                                                 password_hash)
            sub.issue_password(password_hash, subject, sealed, "welcome")
            return _sub_installer_view(sub), [sub]

        try:
            return self.execute(command)
        except Exception:
            self._vault().shred([subject])  # sealed for nothing: no account carries it
            raise

    def list_sub_installers(self, query: Mapping[str, Any]) -> dict[str, Any]:
        return self._views().sub_installers(str(self._main_installer()), **query)

    def get_sub_installer(self, account_id: Any) -> dict[str, Any]:
        return _sub_installer_view(self._sub_installer(account_id))

    def edit_sub_installer(self, account_id: Any, payload: Mapping[str, Any]
                           ) -> dict[str, Any]:
        changes = checked(SubInstallerEdit, payload)

        def command() -> tuple[dict[str, Any], list[Any]]:
            sub = self._sub_installer(account_id)
            if "email" in changes and changes["email"] is None:
                raise Invalid.field("email", "The email is required: the password goes there.")
            sub.edit_contact(changes.get("email", sub.email), changes.get("phone", sub.phone))
            return _sub_installer_view(sub), [sub]

        return self.execute(command)

    def reset_sub_installer_password(self, account_id: Any) -> None:
        """A new password, emailed; the old one stops working and every session ends."""
        self._reset_password_of(account_id, SUB_INSTALLER)

    def delete_sub_installer(self, account_id: Any) -> None:
        """Gone at once: its sessions end in the same commit; deleting it again is NotFound."""
        self._delete(account_id, SUB_INSTALLER)

    def _reset_password_of(self, account_id: Any, role: str) -> None:
        self._managed(account_id, role)
        password = generated_password()
        password_hash = self.credentials.hash_password(password)
        uid = _uuid(account_id)
        assert uid is not None
        subject = password_subject(uid)
        sealed = self._vault().seal(subject, password)
        replaced: list[str] = []

        def command() -> tuple[None, list[Any]]:
            account = self._managed(account_id, role)
            replaced[:] = [account.password_subject] if account.password_subject else []
            account.issue_password(password_hash, subject, sealed, "reset")
            account.end_sessions("password_reset")
            return None, [account]

        try:
            self.execute(command)
        except Exception:
            self._vault().shred([subject])
            raise
        self._vault().shred(replaced)

    def _delete(self, account_id: Any, role: str) -> None:
        subjects: list[str] = []

        def command() -> tuple[None, list[Any]]:
            account = self._managed(account_id, role)
            subjects[:] = [s for s in (account.password_subject, account.reset_subject) if s]
            account.delete()
            return None, [account]

        self.execute(command)
        self._vault().shred(subjects)

    # -- property managers (manual "Property Manager Account") -----------------------------
    def create_property_manager(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The calling installer's new property manager, on communities of its own; its login
        is its email and its password is made here, sealed for notify's welcome email."""
        request = checked(PropertyManagerCreate, payload)
        installer_id = self._main_installer()
        self._check_communities(request["communities"])
        email = request["email"]
        account_id = PortalAccount.id_for_username(email)
        password = generated_password()
        password_hash = self.credentials.hash_password(password)
        subject = password_subject(account_id)
        sealed = self._vault().seal(subject, password)

        def command() -> tuple[dict[str, Any], list[Any]]:
            installer = self._portal_account(installer_id)
            if installer is None or installer.role != INSTALLER:
                raise Forbidden(ONLY_INSTALLERS)
            if self._portal_account(account_id) is not None:
                message = "An account with this email already exists."
                raise Conflict(message, {"email": [message]})
            manager = installer.create_property_manager(email, password_hash)
            manager.set_property_manager(**_profile(request))
            manager.issue_password(password_hash, subject, sealed, "welcome")
            return _property_manager_view(manager), [manager]

        try:
            return self.execute(command)
        except Exception:
            self._vault().shred([subject])
            raise

    def list_property_managers(self, query: Mapping[str, Any]) -> dict[str, Any]:
        return self._views().property_managers(str(self._main_installer()), **query)

    def get_property_manager(self, account_id: Any) -> dict[str, Any]:
        return _property_manager_view(self._managed(account_id, PROPERTY_MANAGER))

    def edit_property_manager(self, account_id: Any, payload: Mapping[str, Any]
                              ) -> dict[str, Any]:
        changes = checked(PropertyManagerEdit, payload)
        if "communities" in changes:
            self._check_communities(changes["communities"])

        def command() -> tuple[dict[str, Any], list[Any]]:
            manager = self._managed(account_id, PROPERTY_MANAGER)
            current = dict(manager.property_manager or {})
            manager.set_property_manager(**{**_profile(current), **_profile(changes,
                                                                             partial=True)})
            return _property_manager_view(manager), [manager]

        return self.execute(command)

    def reset_property_manager_password(self, account_id: Any) -> None:
        self._reset_password_of(account_id, PROPERTY_MANAGER)

    def delete_property_manager(self, account_id: Any) -> None:
        self._delete(account_id, PROPERTY_MANAGER)

    def _check_communities(self, assignments: list[dict[str, Any]]) -> None:
        """Every community named is one of the caller's (topology answers, over RPC)."""
        ids = [str(a["community_id"]) for a in assignments]
        unknown = self.unknown_communities(ids) if self.unknown_communities else []
        if unknown:
            raise Invalid.field("communities", "Not communities of yours: "
                                               f"{', '.join(sorted(unknown))}.")

    def reveal_password(self, account_id: Any, issue: Any) -> str | None:
        """The issued password `issue` of an account, for the email that carries it; None once
        it is not the account's login any more (reset again, changed, deleted, used)."""
        uid = _uuid(account_id)
        account = self._portal_account(uid) if uid is not None else None
        if (account is None or account.deleted or account.password_subject is None
                or account.password_issue != issue):
            return None
        return self._vault().open(account.password_subject, account.password_sealed)

    def _main_installer(self) -> UUID:
        caller = context.current()
        uid = _uuid(caller.account_id) if caller.role == INSTALLER else None
        if uid is None:
            raise Forbidden(ONLY_INSTALLERS)
        return uid

    def _sub_installer(self, account_id: Any) -> PortalAccount:
        return self._managed(account_id, SUB_INSTALLER)

    def _managed(self, account_id: Any, role: str) -> PortalAccount:
        """A live account of this role that the calling installer made, or NotFound."""
        installer_id = self._main_installer()
        uid = _uuid(account_id)
        account = self._portal_account(uid) if uid is not None else None
        if account is None or not account.account_of(installer_id, role):
            raise NotFound(NO_SUB_INSTALLER if role == SUB_INSTALLER
                           else "No such property manager account.")
        return account

    # -- sessions --------------------------------------------------------------------------
    def login(self, username: str, password: str) -> dict[str, Any]:
        """Open a session; the raw token is returned once and only its digest is stored.

        Failed logins are counted per username and address (`login_rules`): a locked key is
        refused before any password is checked, alike for real and unknown usernames."""
        name = username if isinstance(username, str) else ""
        rules = login_rules(name, context.current().client_address, self.login_limits)
        if self._lockout().locked_for(key for key, _ in rules) > 0:
            raise TooManyAttempts(LOCKED_OUT)
        account = None
        if name:
            account = self._portal_account(PortalAccount.id_for_username(name))
        if account is None or account.deleted:
            # Spend a hash verification anyway, so timing does not tell unknown usernames apart.
            self.credentials.verify_password(self._decoy_hash, str(password))
            self._lockout().failed(rules)
            raise Unauthorized(LOGIN_FAILED)
        if not self.credentials.verify_password(account.password_hash, str(password)):
            self._lockout().failed(rules)
            raise Unauthorized(LOGIN_FAILED)
        self._lockout().forget(key for key, _ in rules[:2])  # the address keeps its count
        if account.password_subject is not None:
            # The emailed password reached its owner: nothing needs to open it any more.
            self._vault().shred([account.password_subject])
        if account.needs_second_factor and account.email:
            return self._challenge(account)
        return self._open_session(account)

    def _challenge(self, account: PortalAccount) -> dict[str, Any]:
        """The right password of an account with two-factor login: a code is emailed (sealed
        until notify sends it) and the caller gets the challenge to answer with it."""
        challenge = f"{account.id}.{secrets.token_urlsafe(24)}"
        code = "".join(secrets.choice("0123456789") for _ in range(CODE_DIGITS))
        subject = f"code:{account.id}:{secrets.token_hex(8)}"
        sealed = self._vault().seal(subject, code)
        expires_at = (self.clock() + timedelta(seconds=CODE_SECONDS)).isoformat()
        replaced: list[str] = []

        def command() -> tuple[None, list[Any]]:
            mine = self.repository.get(account.id)
            if mine.challenge is not None:
                replaced.append(mine.challenge["code_subject"])
            mine.challenge_login(self.credentials.token_digest(challenge),
                                 _code_digest(challenge, code), subject, sealed, expires_at)
            return None, [mine]

        with context.acting(replace(context.current(), actor=f"{account.role}:"
                                                             f"{account.username}",
                                    role=account.role, account_id=str(account.id))):
            self.execute(command)
        self._vault().shred(replaced)
        return {"token": None, "expires_at": None, "role": account.role,
                "account_id": str(account.id),
                "two_factor": {"challenge": challenge, "expires_at": expires_at,
                               "sent_to": _masked(account.email or "")}}

    def verify_login(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The emailed code of a login's challenge: the session opens. A wrong code uses one
        of the challenge's tries and counts as a failed login; an unknown, expired or spent
        challenge is refused alike."""
        request = checked(LoginVerify, payload)
        challenge, code = request["challenge"], request["code"]
        uid = _uuid(challenge.partition(".")[0])
        account = self._portal_account(uid) if uid is not None else None
        name = account.username if account is not None else challenge[:64]
        rules = login_rules(name, context.current().client_address, self.login_limits)
        if self._lockout().locked_for(key for key, _ in rules) > 0:
            raise TooManyAttempts(LOCKED_OUT)
        digest = self.credentials.token_digest(challenge)
        if account is None or account.open_challenge(digest, self.clock()) is None:
            self._lockout().failed(rules)
            raise Unauthorized(CODE_FAILED)
        passed: list[bool] = []
        subject = (account.challenge or {}).get("code_subject")

        def command() -> tuple[None, list[Any]]:
            mine = self.repository.get(account.id)
            passed[:] = [mine.answer_challenge(digest, _code_digest(challenge, code),
                                               self.clock())]
            return None, [mine]

        with context.acting(replace(context.current(), actor=f"{account.role}:"
                                                             f"{account.username}",
                                    role=account.role, account_id=str(account.id))):
            self.execute(command)
        if not passed[0]:
            self._lockout().failed(rules)
            raise Unauthorized(CODE_FAILED)
        if subject:
            self._vault().shred([subject])
        return self._open_session(self.repository.get(account.id))

    def installer_settings(self) -> dict[str, Any]:
        """The calling installer's Setting module, defaults where it set nothing."""
        account = self._portal_account(self._main_installer())
        if account is None:
            raise Unauthorized(NOT_SIGNED_IN)
        return _settings_view(account)

    def edit_installer_settings(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        changes = checked(InstallerSettings, payload)
        installer_id = self._main_installer()

        def command() -> tuple[dict[str, Any], list[Any]]:
            account = self._portal_account(installer_id)
            if account is None:
                raise Unauthorized(NOT_SIGNED_IN)
            current = _settings_view(account)
            merged = {**current, **{k: v for k, v in changes.items()
                                    if k not in ("billing", "customer_service")}}
            for part in ("billing", "customer_service"):
                if part in changes:
                    merged[part] = {**current[part], **changes[part]}
            account.set_installer_settings(merged)
            return _settings_view(account), [account]

        return self.execute(command)

    def set_own_two_factor(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        changes = checked(AccountEdit, payload)
        account = self._caller_account()
        if "two_factor" in changes:
            self._change(account.id, lambda a: a.set_two_factor(changes["two_factor"]))
        return self.account()

    def _open_session(self, account: PortalAccount) -> dict[str, Any]:
        token = self.credentials.new_token()
        digest = self.credentials.token_digest(token)
        expires_at = (self.clock() + self.token_ttl).isoformat()
        answer = {"token": token, "expires_at": expires_at, "role": account.role,
                  "account_id": str(account.id)}

        def command() -> tuple[dict[str, Any], list[Any]]:
            opened = self.repository.get(account.id)
            opened.open_session(digest, expires_at)
            return answer, [opened]

        # The session is the account's own act: its events carry it as the actor.
        with context.acting(replace(context.current(), actor=f"{account.role}:{account.username}",
                                    role=account.role, account_id=str(account.id))):
            return self.execute(command)

    def account(self) -> dict[str, Any]:
        """The caller's own portal account."""
        account = self._caller_account()
        return {"id": str(account.id), "username": account.username, "role": account.role,
                "email": account.email, "phone": account.phone,
                "installer_id": str(account.installer_id) if account.installer_id else None,
                "two_factor": account.needs_second_factor}

    def change_password(self, token: str, payload: Mapping[str, Any]) -> None:
        """The caller's own password, proved by the current one; every other session ends
        (this one stays). Wrong current passwords count as failed logins."""
        request = checked(PasswordChange, payload)
        account = self._caller_account()
        digest = self._digest(token)
        rules = login_rules(account.username, context.current().client_address,
                            self.login_limits)
        if self._lockout().locked_for(key for key, _ in rules) > 0:
            raise TooManyAttempts(LOCKED_OUT)
        if not self.credentials.verify_password(account.password_hash,
                                                request["current_password"]):
            self._lockout().failed(rules)
            raise Invalid.field("current_password", "Wrong password.")
        if request["new_password"] == request["current_password"]:
            raise Invalid.field("new_password", "Choose a password other than the current one.")
        new_hash = self.credentials.hash_password(request["new_password"])
        issued: list[str] = []

        def command() -> tuple[None, list[Any]]:
            mine = self.repository.get(account.id)
            if mine.password_hash != account.password_hash:
                raise Conflict("The password was changed meanwhile; try again.")
            issued[:] = [mine.password_subject] if mine.password_subject else []
            mine.change_password(new_hash)
            mine.end_sessions("password_changed", keep=digest)
            return None, [mine]

        self.execute(command)
        self._vault().shred(issued)

    def forgot_password(self, payload: Mapping[str, Any]) -> None:
        """Email a single-use link to reset the password, if the username is an account with
        an email; answered alike either way. Requests are limited per username and address."""
        request = checked(PasswordForgotten, payload)
        name = request["username"].strip().lower()
        address = context.current().client_address or "unknown"
        rules = [(f"forgot:{name}", _rule(RESET_LIMITS["user"])),
                 (f"forgot-addr:{address}", _rule(RESET_LIMITS["addr"]))]
        if self._lockout().locked_for(key for key, _ in rules) > 0:
            raise TooManyAttempts(TOO_MANY_LINKS)
        self._lockout().failed(rules)  # every request counts, whatever it names
        account = self._portal_account(PortalAccount.id_for_username(name))
        if account is None or account.deleted or not account.email:
            return
        token = f"{account.id}.{secrets.token_urlsafe(32)}"
        subject = f"reset:{account.id}:{secrets.token_hex(8)}"
        sealed = self._vault().seal(subject, token)
        expires_at = (self.clock() + timedelta(seconds=RESET_LINK_SECONDS)).isoformat()
        replaced: list[str] = []

        def command() -> tuple[None, list[Any]]:
            mine = self.repository.get(account.id)
            replaced[:] = [mine.reset_subject] if mine.reset_subject else []
            mine.request_reset(self.credentials.token_digest(token), subject, sealed,
                               expires_at)
            return None, [mine]

        with context.acting(replace(context.current(), actor=f"{account.role}:"
                                                             f"{account.username}")):
            try:
                self.execute(command)
            except Exception:
                self._vault().shred([subject])
                raise
        self._vault().shred(replaced)

    def reset_password(self, payload: Mapping[str, Any]) -> None:
        """The emailed link's token sets a new password once; every session ends. A token
        that is not the account's current, unused, unexpired link is 422 naming `token`, and
        counts against the address."""
        request = checked(PasswordReset, payload)
        token = request["token"]
        address = context.current().client_address or "unknown"
        rules = [(f"addr:{address}", _rule(self.login_limits["addr"]))]
        if self._lockout().locked_for(key for key, _ in rules) > 0:
            raise TooManyAttempts(LOCKED_OUT)
        uid = _uuid(token.partition(".")[0])
        account = self._portal_account(uid) if uid is not None else None
        digest = self.credentials.token_digest(token)
        if account is None or not account.reset_link_open(digest, self.clock()):
            self._lockout().failed(rules)
            raise Invalid.field("token", BAD_LINK)
        new_hash = self.credentials.hash_password(request["new_password"])
        spent: list[str] = []

        def command() -> tuple[None, list[Any]]:
            mine = self.repository.get(account.id)
            spent[:] = [s for s in (mine.reset_subject, mine.password_subject) if s]
            mine.complete_reset(digest, new_hash, self.clock())
            return None, [mine]

        with context.acting(replace(context.current(), actor=f"{account.role}:"
                                                             f"{account.username}")):
            self.execute(command)
        self._vault().shred(spent)

    def reveal_secret(self, kind: str, account_id: Any, issue: Any) -> str | None:
        """What an email's mark stands for, as notify's mailer sends it: an issued password
        or a forgotten password's link, only while it is still the account's current one."""
        if kind == "password":
            return self.reveal_password(account_id, issue)
        if kind == "login_code":
            uid = _uuid(account_id)
            account = self._portal_account(uid) if uid is not None else None
            pending = account.challenge if account is not None else None
            if (pending is None or pending["number"] != issue or account is None
                    or account.open_challenge(pending["challenge_digest"], self.clock()) is None):
                return None
            return self._vault().open(pending["code_subject"], pending["code_sealed"])
        if kind != "reset_link":
            return None
        uid = _uuid(account_id)
        account = self._portal_account(uid) if uid is not None else None
        if (account is None or account.reset_request != issue or account.reset_digest is None
                or account.reset_subject is None
                or not account.reset_link_open(account.reset_digest, self.clock())):
            return None
        return self._vault().open(account.reset_subject, account.reset_sealed)

    def logout_everywhere(self) -> int:
        """End every session of the caller's account, this one too; how many ended."""
        account = self._caller_account()

        def command() -> tuple[int, list[Any]]:
            mine = self.repository.get(account.id)
            return mine.end_sessions("logout_everywhere"), [mine]

        return self.execute(command)

    def _caller_account(self) -> PortalAccount:
        uid = _uuid(context.current().account_id)
        account = self._portal_account(uid) if uid is not None else None
        if account is None or account.deleted:
            raise Unauthorized(NOT_SIGNED_IN)
        return account

    def logout(self, token: str) -> None:
        """Close the token's session; an unknown or closed token is Unauthorized."""
        digest = self._digest(token)
        session = self._views().session(digest)
        if session is None or session["closed"]:
            raise Unauthorized(NOT_SIGNED_IN)
        with context.acting({"actor": f"{session['role']}:{session['username']}",
                             "correlation_id": context.current().correlation_id,
                             "role": session["role"]}):
            self._change(UUID(session["account_id"]), lambda a: a.close_session(digest))

    def authenticate(self, token: str) -> dict[str, Any]:
        """The principal of an open, unexpired session (one read-model lookup)."""
        session = self._views().session(self._digest(token))
        if session is None or session["closed"]:
            raise Unauthorized(NOT_SIGNED_IN)
        if session["expires_at"] <= self.clock():
            raise Unauthorized(EXPIRED)
        principal = {
            "account_id": session["account_id"],
            "role": session["role"],
            "username": session["username"],
            "installer_id": session["installer_id"],
        }
        if session["role"] == PROPERTY_MANAGER:
            # Its communities and permissions there: what every context scopes it by.
            principal["communities"] = self._views().scopes(session["account_id"])
        return principal

    # -- family members (manual "Add/Edit/Delete Family Members") ---------------------------
    def add_family_member(self, apartment_id: Any, payload: Mapping[str, Any]
                          ) -> dict[str, Any]:
        """A family member's app account for the APT's master account, with a SIP number of
        its own; the fourth and later are refused (402) until billing sells an Additional
        App."""
        request = checked(FamilyMemberCreate, payload)

        def command() -> tuple[dict[str, Any], list[Any]]:
            account = self._family_of(apartment_id)
            sip = self._free_sip()
            claim = FamilySip(sip=sip, master_account_id=account.id)
            member = {"first_name": request["first_name"], "last_name": request["last_name"],
                      "email": request["email"], "mobile": request.get("mobile")}
            account.add_family_member(str(claim.id), sip, member)
            return _family_view(account, str(claim.id)), [claim, account]

        return self.execute(command)

    def list_family_members(self, apartment_id: Any) -> dict[str, Any]:
        account = self._family_of(apartment_id)
        items = [_family_view(account, member) for member in account.family_member_ids]
        return {"items": items, "total": len(items), "free_left": max(
            0, FREE_FAMILY_MEMBERS - account.free_used)}

    def get_family_member(self, member_id: Any) -> dict[str, Any]:
        account, member = self._member(member_id)
        return _family_view(account, member)

    def edit_family_member(self, member_id: Any, payload: Mapping[str, Any]) -> dict[str, Any]:
        if isinstance(payload, Mapping) and "email" in payload:
            raise Invalid.field("email", EMAIL_FIXED)
        changes = checked(FamilyMemberEdit, payload)

        def command() -> tuple[dict[str, Any], list[Any]]:
            account, member = self._member(member_id)
            account.edit_family_member(member, changes)
            return _family_view(account, member), [account]

        return self.execute(command)

    def remove_family_member(self, member_id: Any) -> None:
        """Its app account stops working; the free account it took is not given back."""
        def command() -> tuple[None, list[Any]]:
            account, member = self._member(member_id)
            if not context.current().may(account.community_id, "delete_account"):
                raise Forbidden("Deleting a family member's account takes the Delete Account "
                                "Permission in this community.")
            account.remove_family_member(member)
            return None, [account]

        self.execute(command)

    def _family_of(self, apartment_id: Any) -> MasterAccount:
        """The APT's master account, when the caller works on that APT's community."""
        caller = context.current()
        if caller.role not in (*INSTALLER_ROLES, PROPERTY_MANAGER):
            raise Forbidden("Only an installer or a property manager manages family members.")
        uid = _uuid(apartment_id)
        account = self._master_account(str(uid)) if uid is not None else None
        if (account is None or account.closed
                or str(account.installer_id) != str(caller.installer_id)
                or not caller.in_scope(account.community_id)):
            raise NotFound("No resident's account in this APT.")
        return account

    def _member(self, member_id: Any) -> tuple[MasterAccount, str]:
        uid = _uuid(member_id)
        claim = self._get(uid) if uid is not None else None
        if not isinstance(claim, FamilySip):
            raise NotFound("No such family member.")
        found = self._get(claim.master_account_id)
        if not isinstance(found, MasterAccount):
            raise NotFound("No such family member.")
        try:
            account = self._family_of(found.apartment_id)
        except NotFound:
            # Out of the caller's scope: answered as an id that exists nowhere.
            raise NotFound("No such family member.") from None
        if str(uid) not in account.family_member_ids:
            raise NotFound("No such family member.")
        return account, str(uid)

    def _free_sip(self) -> str:
        """A SIP number no family member holds (the store refuses a second claim of one, and
        the chassis runs the command again with another)."""
        while True:
            sip = FAMILY_SIP_PREFIX + "".join(secrets.choice("0123456789") for _ in range(
                SIP_DIGITS - len(FAMILY_SIP_PREFIX)))
            if self._get(FamilySip.id_for(sip)) is None:
                return sip

    # -- residents' master accounts (policy on topology events) ----------------------------
    def on_topology_event(self, envelope: Mapping[str, Any]) -> list[Any]:
        """The master-account changes a topology event asks for (the ProcessHandler saves them).

        A reset sends no email: it records MasterAccountReset, which notify does not mail about.
        A deleted APT closes its account once; later events for it change nothing. An event the
        domain refuses is logged and skipped, so it cannot block the stream.
        """
        kind = envelope["type"]
        apartment_id = envelope["stream_id"]
        data = envelope["data"]
        try:
            if kind == "ResidentAdded":
                return self._resident_added(apartment_id, data)
            if kind == "ResidentEdited":
                return self._resident_edited(apartment_id, data.get("changes") or {})
            if kind == "ApartmentReset":
                return self._apartment_reset(apartment_id)
            if kind == "ApartmentDeleted":
                return self._apartment_deleted(apartment_id)
        except Invalid as exc:
            log.error("accounts refused topology %s of apartment %s (position %s): %s %s",
                      kind, apartment_id, envelope.get("position"), exc.detail, exc.errors)
        return []

    def lookups(self, envelopes: list[Mapping[str, Any]]) -> list[UUID]:
        """The master accounts `on_topology_event` will look for in these events, checked in
        one query for a whole batch: a new resident's account has no events yet, and each
        such miss would otherwise cost a query of its own."""
        ids = []
        for envelope in envelopes:
            if envelope.get("type") not in TOPOLOGY_EVENTS:
                continue
            try:
                ids.append(MasterAccount.id_for_apartment(envelope["stream_id"]))
            except (Invalid, KeyError):
                continue  # the policy itself reports a malformed event
        return ids

    def _resident_added(self, apartment_id: str, data: Mapping[str, Any]) -> list[Any]:
        if self._master_account(apartment_id) is not None:
            return []
        account = MasterAccount.create(
            apartment_id=apartment_id,
            community_id=data["community_id"],
            installer_id=data["installer_id"],
            first_name=data["first_name"],
            last_name=data["last_name"],
            email=data.get("email"),
        )
        return [account]

    def _resident_edited(self, apartment_id: str, changes: Mapping[str, Any]) -> list[Any]:
        if not any(name in changes for name in CONTACT_FIELDS):
            return []
        account = self._master_account(apartment_id)
        if account is None:
            log.warning("ResidentEdited for apartment %s, which has no master account",
                        apartment_id)
            return []
        account.update_contact(
            first_name=changes.get("first_name", account.first_name),
            last_name=changes.get("last_name", account.last_name),
            email=changes.get("email", account.email),
        )
        return [account]

    def _apartment_reset(self, apartment_id: str) -> list[Any]:
        account = self._master_account(apartment_id)
        if account is None:
            log.warning("ApartmentReset for apartment %s, which has no master account",
                        apartment_id)
            return []
        account.reset()
        return [account]

    def _apartment_deleted(self, apartment_id: str) -> list[Any]:
        account = self._master_account(apartment_id)
        if account is None:
            log.warning("ApartmentDeleted for apartment %s, which has no master account",
                        apartment_id)
            return []
        account.close()
        return [account]

    # -- queries ---------------------------------------------------------------------------
    def get_master_account(self, apartment_id: str, installer_id: str | None) -> dict[str, Any]:
        """The apartment's master account, if it belongs to `installer_id` (else NotFound)."""
        apartment = _uuid(apartment_id)
        owner = _uuid(installer_id) if installer_id else None
        row = self._views().master_account(str(apartment)) if apartment else None
        if row is None or owner is None or _uuid(row["installer_id"]) != owner:
            raise NotFound("No master account for this apartment.")
        return row

    # -- helpers ---------------------------------------------------------------------------
    def _lockout(self) -> Lockout:
        if self.lockout is None:
            raise RuntimeError("this application was built without a database (no lockout)")
        return self.lockout

    def _vault(self) -> Vault:
        if self.vault is None:
            raise RuntimeError("this application was built without a database (no vault)")
        return self.vault

    def _views(self) -> AccountsViews:
        if self.views is None:
            raise RuntimeError("this application was built without a read side (no engine)")
        return self.views

    def _digest(self, token: Any) -> str:
        if not isinstance(token, str) or not token:
            raise Unauthorized(NOT_SIGNED_IN)
        return self.credentials.token_digest(token)

    def _portal_account(self, account_id: UUID) -> PortalAccount | None:
        found = self._get(account_id)
        return found if isinstance(found, PortalAccount) else None

    def _master_account(self, apartment_id: str) -> MasterAccount | None:
        found = self._get(MasterAccount.id_for_apartment(apartment_id))
        return found if isinstance(found, MasterAccount) else None

    def _get(self, aggregate_id: UUID) -> Any:
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def _change(self, account_id: UUID, change: Callable[[Any], None]) -> None:
        """Load, change and save one aggregate (the chassis runs it again on a lost race)."""

        def command() -> tuple[None, list[Any]]:
            aggregate = self.repository.get(account_id)
            change(aggregate)
            return None, [aggregate]

        self.execute(command)
