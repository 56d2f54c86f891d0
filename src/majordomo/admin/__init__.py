"""The admin API and the self-service routes: ordinary Quart-Trio routes beside `/health`,
off the proxy's hot path, sharing the database queries the CLI uses (see `api.py`)."""

from majordomo.admin.api import ROUTES, add_routes
from majordomo.admin.auth import LoginThrottle, jwt_secret

__all__ = ["ROUTES", "LoginThrottle", "add_routes", "jwt_secret"]
