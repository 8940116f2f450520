"""Settings from environment variables (twelve-factor); the README's table lists every one."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

EMBEDDED_AMQP_URI = "concierge-memory://"
# nameko config key carrying the deployment's prefix of AMQP names (`concierge.rpc` reads it).
AMQP_PREFIX_CONFIG_KEY = "CONCIERGE_AMQP_PREFIX"
# A deployment name ends up in PostgreSQL schema names, where an unquoted identifier is folded
# to lower case (`search_path`), and in `application_name`, which keeps 63 bytes.
DEPLOYMENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,29}")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("var")
    amqp_uri: str = EMBEDDED_AMQP_URI
    database_url: str = ""
    # Names every broker object, schema and lock key of one deployment; empty: today's names.
    deployment: str = ""
    # Empty with a deployment name: `<deployment>_` (see `__post_init__`).
    schema_prefix: str = ""
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    bootstrap_distributor: str = ""
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: str = ""
    mail_from: str = "SmartPlus Cloud <no-reply@smartplus.local>"
    token_ttl_hours: int = 24
    # Failed logins allowed per key before a lockout ("pair=5,user=20,addr=50"; empty: the
    # contract's LOGIN_LIMITS). A test platform whose every client is 127.0.0.1 raises `addr`.
    login_limits: str = ""
    # Where people open the portal: the links in emails (a forgotten password's) point there.
    # Empty: the gateway's own address.
    portal_url: str = ""
    # Proxies in front of the gateway whose X-Forwarded-For is trusted (the client is the
    # address that many hops back); 0: the peer itself is the client.
    trusted_proxies: int = 0
    relay_idle_seconds: float = 1.0
    gateway_timeout_seconds: float = 10.0
    gateway_body_timeout_seconds: float = 5.0
    gateway_idle_timeout_seconds: float = 30.0
    shutdown_seconds: float = 5.0
    log_level: str = "INFO"
    # The most connections each of a service's two PostgreSQL pools opens (the event store's,
    # the read models'); a caller finding its pool in use waits for a connection.
    db_pool_size: int = 2
    # Device traffic: how often devices send a heartbeat, how many intervals of silence make
    # a device offline, how long door and call logs are kept, how old a message may be.
    heartbeat_seconds: float = 30.0
    offline_tolerance: float = 3.0
    traffic_retention_days: float = 90.0
    traffic_replay_seconds: float = 86_400.0
    # Who holds a connection (`pg_stat_activity.application_name`): a service, or the CLI.
    role: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.deployment and not DEPLOYMENT_NAME.fullmatch(self.deployment):
            raise ValueError(
                f"CONCIERGE_DEPLOYMENT={self.deployment!r}: use 1 to 30 lower-case letters, "
                "digits and underscores, starting with a letter")
        if self.deployment and not self.schema_prefix:
            object.__setattr__(self, "schema_prefix", f"{self.deployment}_")
        if self.db_pool_size < 2:
            # A transaction may need a second connection of its pool while it holds the first
            # (a read model's position read while its commit is open): with one, it would wait
            # for itself.
            raise ValueError(f"CONCIERGE_DB_POOL_SIZE={self.db_pool_size}: use 2 or more")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        return cls(
            data_dir=Path(env.get("CONCIERGE_DATA_DIR", "var")),
            amqp_uri=env.get("AMQP_URI", "") or EMBEDDED_AMQP_URI,
            database_url=env.get("CONCIERGE_DATABASE_URL", ""),
            deployment=env.get("CONCIERGE_DEPLOYMENT", ""),
            schema_prefix=env.get("CONCIERGE_SCHEMA_PREFIX", ""),
            gateway_host=env.get("CONCIERGE_GATEWAY_HOST", "127.0.0.1"),
            gateway_port=int(env.get("CONCIERGE_GATEWAY_PORT", "8000")),
            bootstrap_distributor=env.get("CONCIERGE_BOOTSTRAP_DISTRIBUTOR", ""),
            smtp_host=env.get("CONCIERGE_SMTP_HOST", ""),
            smtp_port=int(env.get("CONCIERGE_SMTP_PORT", "25")),
            smtp_user=env.get("CONCIERGE_SMTP_USER", ""),
            smtp_password=env.get("CONCIERGE_SMTP_PASSWORD", ""),
            mail_from=env.get("CONCIERGE_MAIL_FROM", cls.mail_from),
            token_ttl_hours=int(env.get("CONCIERGE_TOKEN_TTL_HOURS", "24")),
            login_limits=env.get("CONCIERGE_LOGIN_LIMITS", ""),
            portal_url=env.get("CONCIERGE_PORTAL_URL", ""),
            trusted_proxies=int(env.get("CONCIERGE_TRUSTED_PROXIES", "0")),
            relay_idle_seconds=float(env.get("CONCIERGE_RELAY_IDLE_SECONDS", "1.0")),
            gateway_timeout_seconds=float(env.get("CONCIERGE_GATEWAY_TIMEOUT_SECONDS", "10")),
            gateway_body_timeout_seconds=float(
                env.get("CONCIERGE_GATEWAY_BODY_TIMEOUT_SECONDS", "5")),
            gateway_idle_timeout_seconds=float(
                env.get("CONCIERGE_GATEWAY_IDLE_TIMEOUT_SECONDS", "30")),
            shutdown_seconds=float(env.get("CONCIERGE_SHUTDOWN_SECONDS", "5")),
            log_level=env.get("CONCIERGE_LOG_LEVEL", "INFO"),
            db_pool_size=int(env.get("CONCIERGE_DB_POOL_SIZE", "") or cls.db_pool_size),
            heartbeat_seconds=float(env.get("CONCIERGE_HEARTBEAT_SECONDS", "30")),
            offline_tolerance=float(env.get("CONCIERGE_OFFLINE_TOLERANCE", "3")),
            traffic_retention_days=float(env.get("CONCIERGE_TRAFFIC_RETENTION_DAYS", "90")),
            traffic_replay_seconds=float(env.get("CONCIERGE_TRAFFIC_REPLAY_SECONDS", "86400")),
        )

    @property
    def offline_after(self) -> float:
        """Seconds of silence after which a device is offline."""
        return self.heartbeat_seconds * self.offline_tolerance

    @property
    def embedded_bus(self) -> bool:
        return self.amqp_uri.startswith("concierge-memory")

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.startswith(("postgres://", "postgresql://"))

    @property
    def amqp_prefix(self) -> str:
        """Put before every exchange and queue name this deployment declares."""
        return f"{self.deployment}." if self.deployment else ""

    @property
    def lock_namespace(self) -> str:
        """Put before every advisory lock key: the locks guard the tables, which the schema
        prefix names (empty: the keys of a deployment without a name, as they always were)."""
        return self.schema_prefix

    def schema_for(self, service: str) -> str:
        return f"{self.schema_prefix}{service}"

    def application_name(self, service: str) -> str:
        """`application_name` of every PostgreSQL connection a service (or the CLI on its
        behalf) opens, so that `pg_stat_activity` shows who holds what."""
        parts = ["concierge", self.deployment, service, self.role]
        return "-".join(p for p in parts if p)[:63]

    def service_dir(self, service: str) -> Path:
        path = self.data_dir / service
        path.mkdir(parents=True, exist_ok=True)
        return path

    def postgres_parts(self) -> dict[str, str]:
        url = urlparse(self.database_url)
        return {
            "host": url.hostname or "127.0.0.1",
            "port": str(url.port or 5432),
            "user": url.username or "postgres",
            "password": url.password or "",
            "dbname": (url.path or "/postgres").lstrip("/") or "postgres",
        }

    @property
    def portal_address(self) -> str:
        """The portal's base URL for links in emails."""
        if self.portal_url:
            return self.portal_url.rstrip("/")
        host = "127.0.0.1" if self.gateway_host in ("0.0.0.0", "::") else self.gateway_host
        return f"http://{host}:{self.gateway_port}"

    def nameko_config(self) -> dict[str, object]:
        return {
            "AMQP_URI": self.amqp_uri,
            # nameko's RPC exchange (`nameko.rpc.get_rpc_exchange`); the queues are ours.
            "rpc_exchange": f"{self.amqp_prefix}nameko-rpc",
            AMQP_PREFIX_CONFIG_KEY: self.amqp_prefix,
            "WEB_SERVER_ADDRESS": f"{self.gateway_host}:{self.gateway_port}",
            "serializer": "json",
            "max_workers": 20,
            "parent_calls_tracked": 10,
            "GATEWAY_TIMEOUT_SECONDS": self.gateway_timeout_seconds,
            "GATEWAY_BODY_TIMEOUT_SECONDS": self.gateway_body_timeout_seconds,
            "GATEWAY_IDLE_TIMEOUT_SECONDS": self.gateway_idle_timeout_seconds,
            "GATEWAY_TRUSTED_PROXIES": self.trusted_proxies,
            # Stops in the order a replica behind a queue needs, within SHUTDOWN_SECONDS.
            "SERVICE_CONTAINER_CLS": "concierge.shutdown.DrainingContainer",
            "SHUTDOWN_SECONDS": self.shutdown_seconds,
        }
