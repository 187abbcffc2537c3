from tests.helpers.gateway_env import seed


def test_login_and_list(ftp, user):
    seed(user, "hello.txt", "hi\n")
    lines = []
    ftp.retrlines("LIST", lines.append)
    assert any(line.endswith(" hello.txt") for line in lines)
