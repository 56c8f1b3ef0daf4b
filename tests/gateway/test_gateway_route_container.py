"""The per-trial route from inside a real container on network `none`, as an ordinary (non-root) user: the
trial's own socket works with its key and refuses another trial's, cannot be removed, and nothing else is
reachable (the gateway's TCP port included)."""

from __future__ import annotations

import secrets

import aiodocker
import pytest
from fake_upstream import Reply
from gateway_testing import read_trajectory, vllm_config

from evalkit.gateway.routes import CONTAINER_DIR, SOCKET_NAME

pytestmark = pytest.mark.docker

PROBE = r"""
use strict; use IO::Socket::UNIX; use IO::Socket::INET; use Socket;
sub ask {
    my ($key) = @_;
    my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => "$ENV{ROUTE}/$ENV{SOCKET}")
        or return "connect failed: $!";
    my $body = '{"model":"smollm2","messages":[{"role":"user","content":"hi"}]}';
    print $s "POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer $key\r\n"
        . "Content-Type: application/json\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
    my $reply = do { local $/; <$s> };
    my ($status) = $reply =~ m{^HTTP/1\.1 (\d+)};
    my ($text) = $reply =~ m{"(?:content|message)":"([^"]*)"};
    return "$status $text";
}
print "own: ", ask($ENV{OWN_KEY}), "\n";
print "other: ", ask($ENV{OTHER_KEY}), "\n";
print "unlink: ", (unlink("$ENV{ROUTE}/$ENV{SOCKET}") ? "removed" : "refused"), "\n";
opendir(my $dir, $ENV{ROUTE}); print "listing: ", join(",", sort grep { !/^\./ } readdir($dir)), "\n";
my $tcp = IO::Socket::INET->new(PeerAddr => "127.0.0.1", PeerPort => $ENV{GATEWAY_PORT}, Timeout => 3);
print "gateway tcp: ", ($tcp ? "connected" : "unreachable"), "\n";
print "uid: $<\n";
"""


async def test_a_none_container_reaches_its_own_trial_only(upstream, serve, open_trial, trajectory):
    upstream.default = Reply(text="from inside")
    async with serve(vllm_config(upstream)) as gw:
        own, other = await open_trial(gw, "own"), await open_trial(gw, "other")
        port = gw.url.rsplit(":", 1)[1]
        config = {
            "Image": "debian:bookworm-slim",
            "Cmd": ["perl", "-e", PROBE],
            "User": "65534:65534",
            "Env": [
                f"ROUTE={CONTAINER_DIR}",
                f"SOCKET={SOCKET_NAME}",
                f"OWN_KEY={own.api_key}",
                f"OTHER_KEY={other.api_key}",
                f"GATEWAY_PORT={port}",
            ],
            "Labels": {"evalkit.test": "gateway-route"},
            "HostConfig": {
                "NetworkMode": "none",
                "Init": True,
                "Binds": [f"{own.socket_path.parent}:{CONTAINER_DIR}:ro"],
            },
        }
        async with aiodocker.Docker() as docker:
            container = await docker.containers.create(config, name=f"gateway-route-{secrets.token_hex(4)}")
            try:
                await container.start()
                status = await container.wait(timeout=120)
                output = "".join(await container.log(stdout=True, stderr=True))
            finally:
                await container.delete(force=True)
        assert own.socket_path.exists()
    assert status["StatusCode"] == 0, output
    assert output.splitlines() == [
        "own: 200 from inside",
        "other: 401 not this route's key: use the key evalkit gave this trial",
        "unlink: refused",
        f"listing: {SOCKET_NAME}",
        "gateway tcp: unreachable",
        "uid: 65534",
    ]
    assert len(read_trajectory(trajectory("own"))) == 1 and read_trajectory(trajectory("other")) == []
