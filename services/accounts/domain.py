"""Accounts: portal accounts (distributors, installers) and residents' app master accounts.

Plain Python. The application hashes passwords and tokens before calling in, so the domain only
ever sees and stores digests. A portal request's shape (username, password, email) is checked
once, by its contract schema (contracts/accounts.py), before it reaches an aggregate; a resident's
names and email come from topology's events, and are checked here. Aggregate ids are derived
from natural keys (uuid5) so that a second account with the same username, or a duplicate
ResidentAdded, collides with the first in the store instead of creating a twin.
"""

from __future__ import annotations

import hmac
import re
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import event

from concierge.domain import Aggregate
from contracts.accounts import (
    ADDITIONAL_APP_NEEDED,
    APP_STATUSES,
    CODE_TRIES,
    EMAIL_MAX,
    FREE_FAMILY_MEMBERS,
    MAX_SESSIONS,
    NAME_MAX,
    PORTAL_ROLES,
)
from contracts.errors import Conflict, Forbidden, Invalid, PaymentRequired, Unauthorized
from contracts.fields import EMAIL_PATTERN

# Fixed forever: changing it would give every existing account a new id.
ACCOUNTS_NAMESPACE = UUID("3b7e2f0a-5c1d-4f8e-9a61-0d4c2e8b7f13")

DISTRIBUTOR, INSTALLER, SUB_INSTALLER, PROPERTY_MANAGER = PORTAL_ROLES

TOKEN_DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
# MAX_SESSIONS (contracts.accounts) bounds the state a busy account carries; the oldest session
# is closed to make room.

# App status of a resident's master account. The manual shows "App Status: Unregistered" and says a
# reset makes "the user's app ... unregistered and needs to be re-initialized"; `registered` is
# the state after that initialisation.
UNREGISTERED, REGISTERED = APP_STATUSES


# --- rules shared by the aggregates and the application ------------------------------------


def _validate_email(email: Any) -> None:
    """Raise Invalid unless the email looks like an address (or is None)."""
    if email is None or email == "":
        return
    if not isinstance(email, str) or len(email) > EMAIL_MAX or not EMAIL_PATTERN.fullmatch(email):
        raise Invalid.field("email", "Not a valid email address.")


def _validate_hash(password_hash: Any) -> None:
    if not isinstance(password_hash, str) or not password_hash:
        raise Invalid.field("password", "A password hash is required.")


def _validate_token_digest(token_digest: Any) -> None:
    if not isinstance(token_digest, str) or not TOKEN_DIGEST_PATTERN.fullmatch(token_digest):
        raise Invalid.field("token", "Not a token digest (64 lower-case hex characters).")


def _parse_instant(value: Any, field: str) -> datetime:
    """An ISO 8601 time with its UTC offset; a naive time would compare wrongly across zones."""
    try:
        instant = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        instant = None
    if instant is None or instant.tzinfo is None:
        raise Invalid.field(field, "Not an ISO 8601 date-time with a UTC offset.")
    return instant


def _validate_name(value: Any, field: str, label: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise Invalid.field(field, f"{label} is required.")
    if len(value) > NAME_MAX:
        raise Invalid.field(field, f"{label} is longer than {NAME_MAX} characters.")


def _as_uuid(value: Any, field: str) -> UUID:
    try:
        return UUID(str(value))
    except ValueError:
        raise Invalid.field(field, "Not a valid id.") from None


# --- portal accounts -----------------------------------------------------------------------


class PortalAccount(Aggregate):
    """A login to the portal: a distributor's, an installer's or a sub-installer's."""

    @event("PortalAccountCreated")
    def __init__(
        self,
        role: str,
        username: str,
        email: str | None,
        password_hash: str,
        created_by: UUID | None,
        phone: str | None = None,  # added with sub-installers: older events replay with None
    ) -> None:
        self.role = role
        self.username = username
        self.email = email
        self.phone = phone
        self.password_hash = password_hash
        self.created_by = created_by
        # token digest -> expires_at (ISO 8601); insertion order is the order sessions opened.
        self.sessions: dict[str, str] = {}
        self.deleted = False
        # A property manager's names, settings and communities (PropertyManagerSet).
        self.property_manager: dict[str, Any] | None = None
        # Passwords the platform made for it, and the vault subject of the current one while
        # it may still be emailed (None once the account's owner chose a password of its own).
        self.password_issue = 0
        self.password_subject: str | None = None
        self.password_sealed: str | None = None
        # An installer's Setting module (time zone, billing information, ...); None: defaults.
        self.installer_settings: dict[str, Any] | None = None
        # Its own email two-factor login, and the login codes sent (the pending one, if any).
        self.two_factor = False
        self.challenges = 0
        self.challenge: dict[str, Any] | None = None
        # Forgotten-password links asked for; the current one while it may still be used.
        self.reset_request = 0
        self.reset_digest: str | None = None
        self.reset_expires_at: str | None = None
        self.reset_subject: str | None = None
        self.reset_sealed: str | None = None

    @staticmethod
    def id_for_username(username: str) -> UUID:
        """The one id a username can have, so the store refuses a second account with it."""
        return uuid5(ACCOUNTS_NAMESPACE, f"portal-account:{username.lower()}")

    @staticmethod
    def create_id(username: str) -> UUID:
        """Used by eventsourcing when the account is created."""
        return PortalAccount.id_for_username(username)

    @classmethod
    def open_distributor(cls, username: str, password_hash: str) -> PortalAccount:
        """The bootstrap distributor (DistributorCreate): the one account nobody created."""
        _validate_hash(password_hash)
        return cls(
            role=DISTRIBUTOR,
            username=username,
            email=None,
            password_hash=password_hash,
            created_by=None,
        )

    def create_installer(self, username: str, email: str, password_hash: str) -> PortalAccount:
        """A new installer account (InstallerCreate); installers get their accounts from a
        distributor. The portal sends the login password and password resets to `email`."""
        if self.role != DISTRIBUTOR:
            raise Forbidden("Only a distributor can create installer accounts.")
        _validate_hash(password_hash)
        return PortalAccount(
            role=INSTALLER,
            username=username,
            email=email,
            password_hash=password_hash,
            created_by=self.id,
        )

    def create_sub_installer(self, username: str, email: str, phone: str | None,
                             password_hash: str) -> PortalAccount:
        """A sub-account of this installer (manual "Sub-Installer Account"): it logs in to
        exactly this installer's data."""
        if self.role != INSTALLER or self.deleted:
            raise Forbidden("Only an installer can create sub-installer accounts.")
        _validate_hash(password_hash)
        return PortalAccount(role=SUB_INSTALLER, username=username, email=email,
                             password_hash=password_hash, created_by=self.id, phone=phone)

    def create_property_manager(self, email: str, password_hash: str) -> PortalAccount:
        """A property manager of this installer's communities (manual "Property Manager
        Account"); its login is its email. Its profile and communities come next
        (`set_property_manager`), in the same commit."""
        if self.role != INSTALLER or self.deleted:
            raise Forbidden("Only an installer can create property manager accounts.")
        _validate_hash(password_hash)
        _validate_email(email)
        return PortalAccount(role=PROPERTY_MANAGER, username=email.lower(), email=email,
                             password_hash=password_hash, created_by=self.id)

    def set_property_manager(self, first_name: str, last_name: str, language: str,
                             password_reminder: bool, two_factor: bool,
                             communities: list[dict[str, Any]]) -> bool:
        """Its names, settings and the communities it works on (each with its permissions),
        as a whole; False when nothing changed."""
        self._check_not_deleted()
        if self.role != PROPERTY_MANAGER:
            raise Forbidden("Only a property manager works on assigned communities.")
        _validate_name(first_name, "first_name", "First name")
        _validate_name(last_name, "last_name", "Last name")
        if not communities:
            raise Invalid.field("communities", "A property manager works on at least one "
                                               "community.")
        profile = {"first_name": first_name, "last_name": last_name, "language": language,
                   "password_reminder": bool(password_reminder), "two_factor": bool(two_factor),
                   "communities": [_assignment(a) for a in communities]}
        if profile == self.property_manager:
            return False
        self._set_property_manager(installer_id=self.created_by, **profile)
        return True

    @event("PropertyManagerSet")
    def _set_property_manager(self, first_name: str, last_name: str, language: str,
                              password_reminder: bool, two_factor: bool, installer_id: UUID,
                              communities: list[dict[str, Any]]) -> None:
        self.property_manager = {"first_name": first_name, "last_name": last_name,
                                 "language": language, "password_reminder": password_reminder,
                                 "two_factor": two_factor, "communities": communities}

    @property
    def installer_id(self) -> UUID | None:
        """Whose sites this account works on: its own for an installer, its installer's for a
        sub-installer or a property manager, none for a distributor."""
        if self.role == INSTALLER:
            return self.id
        return self.created_by if self.role in (SUB_INSTALLER, PROPERTY_MANAGER) else None

    def account_of(self, installer_id: UUID | str | None, role: str) -> bool:
        """A live account of this role that this installer made (its sub-installer, its
        property manager)."""
        return (self.role == role and not self.deleted and installer_id is not None
                and str(self.created_by) == str(installer_id))

    def sub_account_of(self, installer_id: UUID | str | None) -> bool:
        return self.account_of(installer_id, SUB_INSTALLER)

    def issue_password(self, password_hash: str, password_subject: str,
                       password_sealed: str, reason: str) -> None:
        """A password the platform made, to be emailed: only its hash is checked at login, and
        the sealed copy opens (for notify's email) only while `password_subject`'s key lives."""
        self._check_not_deleted()
        _validate_hash(password_hash)
        self._issue_password(issue=self.password_issue + 1, reason=reason, role=self.role,
                             username=self.username, email=self.email,
                             password_hash=password_hash, password_subject=password_subject,
                             password_sealed=password_sealed)

    @event("PasswordIssued")
    def _issue_password(self, issue: int, reason: str, role: str, username: str,
                        email: str | None, password_hash: str, password_subject: str,
                        password_sealed: str) -> None:
        self.password_issue = issue
        self.password_hash = password_hash
        self.password_subject = password_subject
        self.password_sealed = password_sealed

    def request_reset(self, reset_digest: str, reset_subject: str, reset_sealed: str,
                      expires_at: str) -> None:
        """A forgotten password's link: only its digest is checked when it is used, and the
        sealed copy opens (for notify's email) only while `reset_subject`'s key lives. A new
        request replaces the one before."""
        self._check_not_deleted()
        _validate_token_digest(reset_digest)
        _parse_instant(expires_at, "expires_at")
        if not self.email:
            raise Conflict("This account has no email to send a link to.")
        self._request_reset(request=self.reset_request + 1, expires_at=expires_at,
                            username=self.username, email=self.email,
                            reset_digest=reset_digest, reset_subject=reset_subject,
                            reset_sealed=reset_sealed)

    @event("PasswordResetRequested")
    def _request_reset(self, request: int, expires_at: str, username: str, email: str,
                       reset_digest: str, reset_subject: str, reset_sealed: str) -> None:
        self.reset_request = request
        self.reset_digest = reset_digest
        self.reset_expires_at = expires_at
        self.reset_subject = reset_subject
        self.reset_sealed = reset_sealed

    def reset_link_open(self, reset_digest: str, now: datetime) -> bool:
        """The link with this digest is the current one, unused and not expired."""
        expires = self.reset_expires_at
        return (not self.deleted and self.reset_digest is not None
                and hmac.compare_digest(self.reset_digest, reset_digest)
                and expires is not None and _parse_instant(expires, "expires_at") > now)

    def complete_reset(self, reset_digest: str, new_hash: str, now: datetime) -> None:
        """The link's password: set once, every session ended, the link spent."""
        if not self.reset_link_open(reset_digest, now):
            raise Invalid.field("token", "This link is not valid: it was used, replaced or "
                                         "has expired.")
        self.change_password(new_hash)
        self.end_sessions("password_reset")
        self._complete_reset(request=self.reset_request)

    @event("PasswordResetCompleted")
    def _complete_reset(self, request: int) -> None:
        self.reset_digest = None
        self.reset_expires_at = None
        self.reset_subject = None
        self.reset_sealed = None

    def set_installer_settings(self, settings: dict[str, Any]) -> bool:
        """The installer's Setting module as a whole (the application merges a change into the
        current settings); False when nothing changed."""
        self._check_not_deleted()
        if self.role != INSTALLER:
            raise Forbidden("Only an installer has these settings.")
        if settings == self.installer_settings:
            return False
        self._set_installer_settings(settings=settings,
                                     allow_distributor_access=bool(
                                         settings.get("allow_distributor_access")))
        return True

    @event("InstallerSettingsSet")
    def _set_installer_settings(self, settings: dict[str, Any],
                                allow_distributor_access: bool) -> None:
        self.installer_settings = settings

    @property
    def needs_second_factor(self) -> bool:
        """Its own setting, or, for a property manager, its installer's for it."""
        return self.two_factor or bool((self.property_manager or {}).get("two_factor"))

    def set_two_factor(self, on: bool) -> bool:
        self._check_not_deleted()
        if bool(on) == self.two_factor:
            return False
        self._set_two_factor(on=bool(on))
        return True

    @event("TwoFactorSet")
    def _set_two_factor(self, on: bool) -> None:
        self.two_factor = on

    def challenge_login(self, challenge_digest: str, code_digest: str, code_subject: str,
                        code_sealed: str, expires_at: str) -> int:
        """A right password that needs the emailed code too: a new challenge replaces the one
        before. Returns its number."""
        self._check_not_deleted()
        _validate_token_digest(challenge_digest)
        _validate_token_digest(code_digest)
        _parse_instant(expires_at, "expires_at")
        if not self.email:
            raise Conflict("This account has no email to send a login code to.")
        number = self.challenges + 1
        self._challenge_login(challenge=number, expires_at=expires_at, username=self.username,
                              email=self.email, challenge_digest=challenge_digest,
                              code_digest=code_digest, code_subject=code_subject,
                              code_sealed=code_sealed)
        return number

    @event("LoginChallenged")
    def _challenge_login(self, challenge: int, expires_at: str, username: str, email: str,
                         challenge_digest: str, code_digest: str, code_subject: str,
                         code_sealed: str) -> None:
        self.challenges = challenge
        self.challenge = {"number": challenge, "expires_at": expires_at,
                          "challenge_digest": challenge_digest, "code_digest": code_digest,
                          "code_subject": code_subject, "code_sealed": code_sealed, "tries": 0}

    def open_challenge(self, challenge_digest: str, now: datetime) -> dict[str, Any] | None:
        """The pending challenge with this digest, while it is unexpired and has tries left."""
        found = self.challenge
        if (found is None or self.deleted
                or not hmac.compare_digest(found["challenge_digest"], challenge_digest)
                or _parse_instant(found["expires_at"], "expires_at") <= now):
            return None
        return found

    def answer_challenge(self, challenge_digest: str, code_digest: str, now: datetime
                         ) -> bool:
        """True for the right code (the challenge is spent); a wrong one uses a try, and the
        last try ends the challenge."""
        found = self.open_challenge(challenge_digest, now)
        if found is None:
            return False
        if hmac.compare_digest(found["code_digest"], code_digest):
            self._pass_challenge(challenge=found["number"])
            return True
        self._fail_code(challenge=found["number"], tries=found["tries"] + 1)
        return False

    @event("LoginCodeFailed")
    def _fail_code(self, challenge: int, tries: int) -> None:
        if self.challenge is not None:
            self.challenge["tries"] = tries
            if tries >= CODE_TRIES:
                self.challenge = None

    @event("LoginChallengePassed")
    def _pass_challenge(self, challenge: int) -> None:
        self.challenge = None

    def edit_contact(self, email: str | None, phone: str | None) -> bool:
        """False when nothing changed (nothing is recorded)."""
        self._check_not_deleted()
        if (email, phone) == (self.email, self.phone):
            return False
        self._edit_contact(email=email, phone=phone)
        return True

    @event("PortalAccountEdited")
    def _edit_contact(self, email: str | None, phone: str | None) -> None:
        self.email = email
        self.phone = phone

    def end_sessions(self, reason: str, keep: str | None = None) -> int:
        """End every session at once (or every one but `keep`); how many ended."""
        ending = [digest for digest in self.sessions if digest != keep]
        if ending:
            self._end_sessions(reason=reason, count=len(ending), token_digests=ending)
        return len(ending)

    @event("SessionsEnded")
    def _end_sessions(self, reason: str, count: int, token_digests: list[str]) -> None:
        for digest in token_digests:
            self.sessions.pop(digest, None)

    def delete(self) -> None:
        """The login is gone at once: its sessions end with it. Deleting twice records
        nothing; the username stays taken (its id is derived from it)."""
        if self.deleted:
            return
        if self.role not in (SUB_INSTALLER, PROPERTY_MANAGER):
            raise Forbidden("Only sub-installer and property manager accounts can be deleted.")
        self.end_sessions("deleted")
        self._delete()

    @event("PortalAccountDeleted")
    def _delete(self) -> None:
        self.deleted = True
        self.password_hash = ""
        self.password_subject = None
        self.reset_digest = None

    def _check_not_deleted(self) -> None:
        if self.deleted:
            raise Conflict("This account was deleted.")

    def open_session(self, token_digest: str, expires_at: str) -> None:
        """Record a login; the token itself never reaches the domain."""
        if self.deleted:
            raise Unauthorized("This account was deleted.")
        _validate_token_digest(token_digest)
        _parse_instant(expires_at, "expires_at")
        if token_digest in self.sessions:
            raise Conflict("This session is already open.")
        while len(self.sessions) >= MAX_SESSIONS:
            self._close_session(token_digest=next(iter(self.sessions)))
        self._open_session(token_digest=token_digest, expires_at=expires_at)

    @event("SessionOpened")
    def _open_session(self, token_digest: str, expires_at: str) -> None:
        self.sessions[token_digest] = expires_at

    def close_session(self, token_digest: str) -> None:
        """Log out; a token that is not open is not a credential, hence Unauthorized."""
        if token_digest not in self.sessions:
            raise Unauthorized("No open session for this token.")
        self._close_session(token_digest=token_digest)

    @event("SessionClosed")
    def _close_session(self, token_digest: str) -> None:
        del self.sessions[token_digest]

    def check_session(self, token_digest: str, now: datetime) -> None:
        """Raise Unauthorized unless the session is open and not expired at `now`."""
        expires_at = self.sessions.get(token_digest)
        if expires_at is None:
            raise Unauthorized("No open session for this token.")
        if _parse_instant(expires_at, "expires_at") <= now:
            raise Unauthorized("The session has expired.")

    def change_password(self, new_hash: str) -> None:
        """Replace the password hash (the application has checked the old password)."""
        _validate_hash(new_hash)
        self._change_password(password_hash=new_hash)

    @event("PasswordChanged")
    def _change_password(self, password_hash: str) -> None:
        self.password_hash = password_hash
        self.password_subject = None  # the issued password, if any, is no longer the login


# --- residents' app accounts ---------------------------------------------------------------


class MasterAccount(Aggregate):
    """The SmartPlus app account of an apartment's resident (the family master account)."""

    @event("MasterAccountCreated")
    def __init__(
        self,
        apartment_id: UUID,
        community_id: UUID,
        installer_id: UUID,
        first_name: str,
        last_name: str,
        email: str | None,
    ) -> None:
        self.apartment_id = apartment_id
        self.community_id = community_id
        self.installer_id = installer_id
        self.first_name = first_name
        self.last_name = last_name
        self.email = email
        self.app_status = UNREGISTERED
        self.password_hash: str | None = None
        self.family_member_ids: list[str] = []
        # Each family member's account: sip, first_name, last_name, email, mobile.
        self.family: dict[str, dict[str, Any]] = {}
        # Free family member accounts taken since the last reset (a delete does not give one
        # back; a reset does).
        self.free_used = 0
        # Each reset starts the app's set-up again (notify keys activation emails by it).
        self.resets = 0
        self.closed = False

    @staticmethod
    def id_for_apartment(apartment_id: UUID | str) -> UUID:
        """One master account per apartment, so a redelivered ResidentAdded cannot make two."""
        return uuid5(ACCOUNTS_NAMESPACE, f"master-account:{_as_uuid(apartment_id, 'apartment_id')}")

    @staticmethod
    def create_id(apartment_id: UUID) -> UUID:
        """Used by eventsourcing when the account is created."""
        return MasterAccount.id_for_apartment(apartment_id)

    @classmethod
    def create(
        cls,
        apartment_id: UUID | str,
        community_id: UUID | str,
        installer_id: UUID | str,
        first_name: str,
        last_name: str,
        email: str | None = None,
    ) -> MasterAccount:
        """The account for a resident just added to an apartment; the app is not yet set up."""
        apartment = _as_uuid(apartment_id, "apartment_id")
        community = _as_uuid(community_id, "community_id")
        installer = _as_uuid(installer_id, "installer_id")
        _validate_contact(first_name, last_name, email)
        return cls(
            apartment_id=apartment,
            community_id=community,
            installer_id=installer,
            first_name=first_name,
            last_name=last_name,
            email=email or None,
        )

    def update_contact(self, first_name: str, last_name: str, email: str | None) -> None:
        """The installer edited the resident; nothing is recorded when nothing changed, nor for
        a closed account (its APT is deleted, so a late edit has nothing left to change)."""
        if self.closed:
            return
        _validate_contact(first_name, last_name, email)
        email = email or None
        if (first_name, last_name, email) == (self.first_name, self.last_name, self.email):
            return
        # The rest tells notify whether an activation email is due without asking accounts.
        self._change_contact(
            first_name=first_name,
            last_name=last_name,
            email=email,
            previous_email=self.email,
            apartment_id=self.apartment_id,
            installer_id=self.installer_id,
            app_status=self.app_status,
            resets=self.resets,
        )

    # The attributes after `email` were added later: events stored before them replay with None.
    @event("MasterAccountContactChanged")
    def _change_contact(
        self,
        first_name: str,
        last_name: str,
        email: str | None,
        previous_email: str | None = None,
        apartment_id: UUID | None = None,
        installer_id: UUID | None = None,
        app_status: str | None = None,
        resets: int | None = None,
    ) -> None:
        self.first_name = first_name
        self.last_name = last_name
        self.email = email

    def register(self, password_hash: str) -> None:
        """The resident initialised the app and chose a password."""
        _validate_hash(password_hash)
        self._check_open()
        if self.app_status == REGISTERED:
            raise Conflict("The app account is already registered.")
        self._register(password_hash=password_hash)

    @event("MasterAccountRegistered")
    def _register(self, password_hash: str) -> None:
        self.password_hash = password_hash
        self.app_status = REGISTERED

    def add_family_member(self, family_member_id: str, sip: str | None = None,
                          member: dict[str, Any] | None = None) -> None:
        """A family member's app account (manual "Add/Edit/Delete Family Members"): the first
        three are free; the fourth and later need an Additional App (PaymentRequired) until
        billing sells one."""
        if not isinstance(family_member_id, str) or not family_member_id:
            raise Invalid.field("family_member_id", "A family member id is required.")
        self._check_open()
        if family_member_id in self.family_member_ids:
            raise Conflict("This family member is already linked to the account.")
        if self.free_used >= FREE_FAMILY_MEMBERS:
            raise PaymentRequired(ADDITIONAL_APP_NEEDED)
        if member is not None:
            _validate_contact(member.get("first_name"), member.get("last_name"),
                              member.get("email"))
        self._add_family_member(family_member_id=family_member_id, sip=sip, free=True,
                                member=dict(member or {}), resets=self.resets)

    # `sip`, `free` and `member` were added later: older events replay with their defaults.
    @event("FamilyMemberAdded")
    def _add_family_member(self, family_member_id: str, sip: str | None = None,
                           free: bool | None = None, member: dict[str, Any] | None = None,
                           resets: int | None = None) -> None:
        self.family_member_ids.append(family_member_id)
        self.family[family_member_id] = {"sip": sip, **(member or {})}
        self.free_used += 1

    def edit_family_member(self, family_member_id: str, changes: dict[str, Any]) -> bool:
        """Names and mobile; the email stays (manual). False when nothing changed."""
        self._check_open()
        current = self.family.get(family_member_id)
        if current is None:
            raise Invalid.field("family_member_id", "Not a family member of this account.")
        member = {k: v for k, v in current.items() if k != "sip"}
        updated = {**member, **{k: changes[k] for k in ("first_name", "last_name", "mobile")
                                if k in changes}}
        _validate_contact(updated.get("first_name"), updated.get("last_name"),
                          updated.get("email"))
        if updated == member:
            return False
        self._edit_family_member(family_member_id=family_member_id, member=updated,
                                 resets=self.resets)
        return True

    @event("FamilyMemberEdited")
    def _edit_family_member(self, family_member_id: str, member: dict[str, Any],
                            resets: int | None = None) -> None:
        self.family[family_member_id] = {"sip": self.family[family_member_id].get("sip"),
                                         **(member or {})}

    def remove_family_member(self, family_member_id: str) -> None:
        """Its app account stops working; the free account it took stays taken."""
        self._check_open()
        if family_member_id not in self.family_member_ids:
            raise Invalid.field("family_member_id", "Not a family member of this account.")
        self._remove_family_member(family_member_id=family_member_id)

    @event("FamilyMemberRemoved")
    def _remove_family_member(self, family_member_id: str) -> None:
        self.family_member_ids.remove(family_member_id)
        self.family.pop(family_member_id, None)

    def reset(self) -> None:
        """Empty the account for the next tenant (manual: "Edit, Reset, and Delete Community
        Residents"): family member accounts and email removed, login credentials reset, app back
        to unregistered. The names, the apartment and its subscription stay. A closed account
        has nothing left to reset."""
        if self.closed:
            return
        # The names stay: recorded again under the next tenancy's key (the previous tenant's
        # key is destroyed with this reset, concierge.vault).
        self._reset(removed_family_member_ids=list(self.family_member_ids),
                    resets=self.resets + 1, first_name=self.first_name,
                    last_name=self.last_name)

    # `resets` and the names came later: older resets replay with None.
    @event("MasterAccountReset")
    def _reset(self, removed_family_member_ids: list[str], resets: int | None = None,
               first_name: str | None = None, last_name: str | None = None) -> None:
        self.family_member_ids = [
            member for member in self.family_member_ids if member not in removed_family_member_ids
        ]
        # The manual's Reset list removes email, mobile, country, landlines, family members and
        # credentials, not the names; topology keeps them too, so both lists stay in step.
        for member in removed_family_member_ids:
            self.family.pop(member, None)
        self.free_used = 0  # "It is free to create a new account in the family after resetting"
        self.email = None
        self.password_hash = None
        self.app_status = UNREGISTERED
        if resets is None:
            self.resets += 1
        else:
            self.resets = resets
            self.first_name = first_name  # type: ignore[assignment]
            self.last_name = last_name  # type: ignore[assignment]

    def close(self) -> None:
        """Delete APT: the resident's app account and its family member accounts stop working.

        Unlike a reset, nothing is kept for a next tenant (manual: a new account in the family
        is free after a reset but "charges after deleting"). Closing twice records nothing.
        """
        if self.closed:
            return
        self._close(apartment_id=self.apartment_id,
                    removed_family_member_ids=list(self.family_member_ids), resets=self.resets)

    @event("MasterAccountClosed")
    def _close(self, apartment_id: UUID, removed_family_member_ids: list[str],
               resets: int | None = None) -> None:
        self.family_member_ids = [
            member for member in self.family_member_ids if member not in removed_family_member_ids
        ]
        self.family = {}
        self.password_hash = None
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise Conflict("The app account is closed: its apartment was deleted.")


class FamilySip(Aggregate):
    """A family member's SIP number, held for one master account: its id is derived from the
    number, so the store refuses a second holder of it. The family member's id is this one."""

    @staticmethod
    def id_for(sip: str) -> UUID:
        return uuid5(ACCOUNTS_NAMESPACE, f"family-sip:{sip}")

    @staticmethod
    def create_id(sip: str, master_account_id: UUID) -> UUID:
        return FamilySip.id_for(sip)

    @event("FamilySipClaimed")
    def __init__(self, sip: str, master_account_id: UUID) -> None:
        self.sip = sip
        self.master_account_id = master_account_id


def _assignment(assignment: dict[str, Any]) -> dict[str, Any]:
    """One community of a property manager, in the one shape events carry."""
    return {"community_id": str(_as_uuid(assignment.get("community_id"), "communities")),
            "app": bool(assignment.get("app", True)),
            "delete_account": bool(assignment.get("delete_account", False)),
            "log_access_control": bool(assignment.get("log_access_control", False))}


def _validate_contact(first_name: Any, last_name: Any, email: Any) -> None:
    """All contact field errors at once, so the portal can mark every bad field."""
    errors: dict[str, list[str]] = {}
    for check in (
        lambda: _validate_name(first_name, "first_name", "First name"),
        lambda: _validate_name(last_name, "last_name", "Last name"),
        lambda: _validate_email(email),
    ):
        try:
            check()
        except Invalid as exc:
            errors.update(exc.errors)
    if errors:
        raise Invalid.fields(errors)
