"""The accounts application: portal logins and sessions, installer accounts, and the residents'
master accounts that follow topology's apartments.

Passwords are hashed and tokens digested here (the `Credentials` adapter), so the domain only ever
sees digests. Token checks read the sessions read model, never the event store.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from concierge import context
from concierge.store import ServiceApplication
from contracts import checked
from contracts.accounts import DistributorCreate, InstallerCreate
from contracts.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from services.accounts.domain import (
    DISTRIBUTOR,
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


def _taken(username: str) -> Conflict:
    message = f"The username {username!r} is already taken."
    return Conflict(message, {"username": [message]})


def _uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value))
    except ValueError:
        return None


class AccountsApplication(ServiceApplication):
    """Commands and queries of the accounts context."""

    service_name = "accounts"

    def __init__(
        self,
        env: dict[str, str] | None = None,
        engine: Any = None,
        credentials: Credentials | None = None,
        token_ttl: timedelta = timedelta(hours=24),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.credentials = credentials or Credentials()
        self.token_ttl = token_ttl
        self.clock = clock or (lambda: datetime.now(UTC))
        # The read models' queries; none without a read side.
        self.views = AccountsViews(engine) if engine is not None else None
        # Made now, with the hasher every account's hash was made with: the first login of an
        # unknown username must not cost a hash more than the others.
        self._decoy_hash = self.credentials.hash_password(secrets.token_urlsafe(16))
        super().__init__(env=env, engine=engine)

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

    # -- sessions --------------------------------------------------------------------------
    def login(self, username: str, password: str) -> dict[str, Any]:
        """Open a session; the raw token is returned once and only its digest is stored."""
        account = None
        if isinstance(username, str) and username:
            account = self._portal_account(PortalAccount.id_for_username(username))
        if account is None:
            # Spend a hash verification anyway, so timing does not tell unknown usernames apart.
            self.credentials.verify_password(self._decoy_hash, str(password))
            raise Unauthorized(LOGIN_FAILED)
        if not self.credentials.verify_password(account.password_hash, str(password)):
            raise Unauthorized(LOGIN_FAILED)
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
        return {
            "account_id": session["account_id"],
            "role": session["role"],
            "username": session["username"],
            "installer_id": session["installer_id"],
        }

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
