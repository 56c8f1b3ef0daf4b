use strict;
use warnings;
use IO::Socket::INET;

my $server = IO::Socket::INET->new(LocalAddr => '127.0.0.1:47232', Listen => 16, ReuseAddr => 1)
  or die "cannot listen: $!";
while (my $client = $server->accept) {
    my $line = <$client>;
    print $client "pong from the entrypoint's service\n" if defined $line;
    close($client);
}
