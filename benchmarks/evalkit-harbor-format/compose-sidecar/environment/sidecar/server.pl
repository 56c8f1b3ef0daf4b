# A line server on 0.0.0.0:47231: answers "token" with $SIDECAR_TOKEN. perl-base is Essential in Debian,
# so debian:bookworm-slim has it (with IO::Socket::INET) without apt.
use strict;
use warnings;
use IO::Socket::INET;

$| = 1;
sleep($ENV{SIDECAR_DELAY} // 0);
my $token = $ENV{SIDECAR_TOKEN} // "missing";
open(my $marker, '>', '/shared/sidecar-started') or die "cannot write /shared: $!";
print $marker "$token\n";
close($marker);
my $server = IO::Socket::INET->new(LocalAddr => '0.0.0.0:47231', Listen => 16, ReuseAddr => 1)
  or die "cannot listen: $!";
print "listening\n";
while (my $client = $server->accept) {
    my $line = <$client>;
    if (defined $line) {
        $line =~ s/\s+$//;
        print $client ($line eq 'token' ? "$token\n" : "unknown request\n");
    }
    close($client);
}
