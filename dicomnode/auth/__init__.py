"""Console users, roles, logins and sessions."""

from dicomnode.auth.users import MIN_PASSWORD, Role, Session, User, UserStore

__all__ = ["MIN_PASSWORD", "Role", "Session", "User", "UserStore"]
