import pytest

from gateway.config import LimitsConfig, RouteConfig
from gateway.core.routing import acceptable_user, is_safe_user, match_route, render_root

ROUTES = (
    RouteConfig(name="partners", user="partner-*", backend="b1", root="/data/{user}"),
    RouteConfig(name="alice", user="alice", backend="b2"),
    RouteConfig(name="rest", user="*", backend="b3", root="~/ftp"),
)


@pytest.mark.parametrize(
    ("user", "route"), [("partner-acme", "partners"), ("alice", "alice"), ("bob", "rest"), ("Alice", "rest")]
)
def test_first_match_wins(user, route):
    found = match_route(ROUTES, user)
    assert found is not None
    assert found.name == route


@pytest.mark.parametrize("user", ["..", ".", "a/b", "a\nb", "", "x\0", "a\\b", "bob:x", "bob:"])
def test_unsafe_user_names_match_nothing(user):
    assert not is_safe_user(user)
    assert match_route(ROUTES, user) is None


def test_render_root():
    assert render_root("/data/{user}", "acme", "/home/acme") == "/data/acme"
    assert render_root("~", "acme", "/home/acme") == "/home/acme"
    assert render_root("~/ftp/", "acme", "/home/acme") == "/home/acme/ftp"
    assert render_root("/", "acme", "/x") == "/"
    assert render_root("//data//{user}", "acme", "/x") == "/data/acme"


def test_group_and_network_conditions():
    import ipaddress

    from gateway.config import RouteConfig

    routes = (
        RouteConfig("office", "*", "b", networks=(ipaddress.ip_network("10.0.0.0/8"),)),
        RouteConfig("partners", "*", "b", group="partners"),
        RouteConfig("rest", "*", "b"),
    )
    assert match_route(routes, "ann", "10.1.2.3").name == "office"
    assert match_route(routes, "ann", "192.0.2.1", frozenset({"partners"})).name == "partners"
    assert match_route(routes, "ann", "192.0.2.1").name == "rest"
    assert match_route(routes, "ann").name == "office"  # no client (sync): networks ignored


def test_ipv4_clients_on_a_dual_stack_listener_match_ipv4_networks():
    import ipaddress

    from gateway.config import RouteConfig

    routes = (
        RouteConfig("office", "*", "b", networks=(ipaddress.ip_network("10.0.0.0/8"),)),
        RouteConfig("x", "*", "b"),
    )
    assert match_route(routes, "ann", "::ffff:10.1.2.3").name == "office"


@pytest.mark.parametrize(
    ("user", "ok"),
    [("bob", True), ("partner-a.b_c", True), ("_svc", True), ("Bob2", True), ("bob@REALM", False),
     ("-bob", False), (".bob", False), ("bob smith", False), ("bob:x", False), ("b" * 257, False)],
)  # fmt: skip
def test_login_names_other_spellings_of_a_user_are_not_acceptable(user, ok):
    assert acceptable_user(user, LimitsConfig().user_names) is ok


def test_an_operator_pattern_cannot_readmit_a_style_suffix():
    assert acceptable_user("bob@example.com", ".+")
    assert not acceptable_user("bob:x", ".+")
