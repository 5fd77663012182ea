# SyTest homeserver driver for "pocketserver" (writes pocketserver's TOML config).
#
# pocketserver's copy of the shared driver (tests/conformance/sytest.sh installs it).
# Install: copy to <sytest>/lib/SyTest/HomeserverFactory/Pocketserver.pm
# (run.sh does this), then:
#
#   ./run-tests.pl -I Pocketserver --pocketserver-cmd "pocketserver" -O tap --all
#
# Modelled on SyTest's Dendrite driver (lib/SyTest/Homeserver/Dendrite.pm): the
# server is a separate binary started from the command line, and readiness is
# "its ports accept TCP connections" (plus optional sd_notify READY=1).
#
# Contract with the server under test (see README.md for the full story):
#
#   <cmd...> --config <hs_dir>/pocketserver.toml [extra -E args]
#   (server output is copied to <hs_dir>/pocketserver.log)
#
#   * client-server API: plain HTTP on bind_host:<client port>
#   * server-server API: HTTPS on bind_host:<federation port>, using the
#     cert/key named in the config. The cert is signed by SyTest's test CA
#     (sytest/keys/ca.crt) for CN/SAN = bind_host (default "localhost").
#   * server_name is "<bind_host>:<federation port>", so remote servers (the
#     other SyTest homeserver, and SyTest's own fake federation servers) reach
#     it directly on that port, no .well-known / SRV lookups involved.
#   * outbound HTTPS (federation, appservices, push, recaptcha, identity
#     servers, CAS, URL previews) goes to SyTest-run servers on bind_host whose
#     certs are signed by the same CA: [federation] extra_ca_file is that CA,
#     verify_tls = false unless --pocketserver-verify-tls.
#   * exits cleanly on SIGINT (SyTest sends SIGINT, then SIGKILL after 30s).

use strict;
use warnings;

package SyTest::HomeserverFactory::Pocketserver;
use base qw( SyTest::HomeserverFactory );

use Text::ParseWords qw( shellwords );

sub _init
{
   my $self = shift;

   $self->{impl} = "SyTest::Homeserver::Pocketserver";
   $self->{args} = {
      command       => $ENV{POCKETSERVER_CMD} // "pocketserver",
      print_output  => 0,
      notify        => 0,
      client_tls    => 0,
      verify_tls    => 0,
   };
   $self->{extra_args} = [];

   $self->SUPER::_init( @_ );
}

# Used by tests marked `implementation_specific => [...]`: those naming only
# 'synapse' / 'dendrite' (Synapse admin API, some federation internals) are not
# run against pocketserver.
sub implementation_name
{
   return "pocketserver";
}

sub get_options
{
   my $self = shift;

   return (
      'pocketserver-cmd=s'   => \$self->{args}{command},
      'pocketserver-notify'  => \$self->{args}{notify},
      'pocketserver-client-tls' => \$self->{args}{client_tls},
      'pocketserver-verify-tls' => \$self->{args}{verify_tls},
      'S|server-log+'        => \$self->{args}{print_output},

      'E=s' => sub { # -Eoption=value is passed through as --option value
         my @more = split m/=/, $_[1], 2;
         $_ = ( length > 1 ? "--$_" : "-$_" ) for $more[0];
         push @{ $self->{extra_args} }, @more;
      },

      $self->SUPER::get_options(),
   );
}

sub print_usage
{
   print STDERR <<'EOF';
       --pocketserver-cmd CMD     - command line that starts the server (split
                                    like a shell would; default
                                    $POCKETSERVER_CMD or "pocketserver").
                                    "--config FILE" is appended.
       --pocketserver-notify      - also wait for sd_notify READY=1 on
                                    $NOTIFY_SOCKET before declaring it started
       --pocketserver-client-tls  - serve the client API over HTTPS too
       --pocketserver-verify-tls  - set [federation] verify_tls = true (the
                                    server then trusts extra_ca_file)
   -S, --server-log               - echo the server's stdout/stderr
   -ENAME, -ENAME=VALUE           - pass --NAME [VALUE] to the server
EOF
}

sub create_server
{
   my $self = shift;

   my %params = (
      @_,
      %{ $self->{args} },
      command    => [ shellwords( $self->{args}{command} ) ],
      extra_args => [ @{ $self->{extra_args} } ],
   );
   return $self->{impl}->new( %params );
}


package SyTest::Homeserver::Pocketserver;
use base qw( SyTest::Homeserver );

use Carp;
use Cwd qw( getcwd );
use File::Path qw( remove_tree make_path );
use File::Slurper qw( write_binary );
use JSON ();

use SyTest::SSL qw( ensure_ssl_key create_ssl_cert );

sub _init
{
   my $self = shift;
   my ( $args ) = @_;

   $self->{$_} = delete $args->{$_} for qw(
      command extra_args print_output notify client_tls verify_tls
   );
   @{ $self->{command} // [] } or croak "Need a pocketserver command";

   $self->{paths} = {};

   $self->SUPER::_init( $args );

   # Ports come from run-tests.pl's --port-range (default 8800:8899).
   my $idx = $self->{hs_index};
   $self->{ports} = {
      client     => main::alloc_port( "pocketserver[$idx].client" ),
      federation => main::alloc_port( "pocketserver[$idx].federation" ),
   };
}

sub configure
{
   my $self = shift;
   my %params = @_;

   exists $params{$_} and $self->{$_} = delete $params{$_} for qw( print_output );

   $self->SUPER::configure( %params );
}

# ---- the Homeserver interface SyTest uses ----

sub server_name     { my $self = shift; return "$self->{bind_host}:" . $self->federation_port }
sub federation_host { my $self = shift; return $self->{bind_host} }
sub federation_port { my $self = shift; return $self->{ports}{federation} }
sub secure_port     { my $self = shift; return $self->{ports}{federation} }
sub unsecure_port   { my $self = shift; return $self->{ports}{client} }

sub public_baseurl
{
   my $self = shift;
   my $scheme = $self->{client_tls} ? "https" : "http";
   return "$scheme://$self->{bind_host}:" . $self->{ports}{client};
}

sub start
{
   my $self = shift;

   my $hs_dir = $self->{hs_dir};
   my $output = $self->{output};
   my $idx    = $self->{hs_index};

   # Fresh media store for every run (as SyTest's Synapse driver does).
   for my $d ( "$hs_dir/media_store", "$hs_dir/uploads" ) {
      remove_tree( $d ) if -d $d;
   }
   make_path( "$hs_dir/media_store" );

   # TLS key + cert for bind_host, signed by SyTest's test CA (keys/ca.key).
   # SyTest::SSL uses relative "keys/ca.crt", so cwd must be the sytest root.
   my $ca_file = getcwd() . "/keys/ca.crt";
   -f $ca_file or croak "Expected SyTest's CA at $ca_file (run from the sytest checkout)";

   $self->{paths}{tls_cert} = "$hs_dir/tls.crt";
   $self->{paths}{tls_key}  = "$hs_dir/tls.key";
   ensure_ssl_key( $self->{paths}{tls_key} );
   create_ssl_cert( $self->{paths}{tls_cert}, $self->{paths}{tls_key}, $self->{bind_host} );

   # SQLite, wiped at every start. _get_dbconfig honours an existing
   # $hs_dir/database.yaml and deletes the old file via _clear_db_sqlite.
   my %db = $self->_get_dbconfig(
      type => "sqlite",
      args => { database => "$hs_dir/pocketserver.db" },
   );
   $db{type} eq "sqlite" or croak "pocketserver driver only supports sqlite";

   # SQLite's WAL/journal side files go with the database
   unlink "$db{args}{database}$_" for qw( -wal -shm -journal );

   my $config = $self->_get_config( $ca_file, $db{args}{database} );
   $self->{paths}{config} = $self->_write_toml( "pocketserver.toml", $config );

   # The server logs to stderr; keep a copy of its output in the hs_dir.
   open $self->{log_fh}, ">>", "$hs_dir/pocketserver.log"
      or croak "Cannot open $hs_dir/pocketserver.log: $!";
   $self->{log_fh}->autoflush( 1 );

   my @command = (
      @{ $self->{command} },
      "--config", $self->{paths}{config},
      @{ $self->{extra_args} },
   );

   my %env = (
      PATH => $ENV{PATH},
      map { defined $ENV{$_} ? ( $_ => $ENV{$_} ) : () }
         qw( HOME LANG LC_ALL PYTHONPATH VIRTUAL_ENV POCKETSERVER_DEBUG SSL_CERT_FILE ),
   );
   $env{PYTHONUNBUFFERED} = 1;    # so its log lines show up promptly

   $output->diag( "Starting pocketserver $idx: @command" );

   my $started;
   if( $self->{notify} ) {
      # The server sends "READY=1" to the unix dgram socket $NOTIFY_SOCKET
      # (sd_notify protocol) once both listeners are up.
      $started = $self->_start_process_and_await_notify(
         setup   => [ env => \%env ],
         command => \@command,
         name    => "pocketserver-$idx",
      );
   }
   else {
      # Wait until the client port accepts connections (fails early if the
      # process exits), then the federation port. SyTest's own 60s start
      # timeout (tests/05homeserver.pl) bounds the whole thing.
      $started = $self->_start_process_and_await_connectable(
         setup        => [ env => \%env ],
         command      => \@command,
         connect_host => $self->{bind_host},
         connect_port => $self->{ports}{client},
         name         => "pocketserver-$idx",
      )->then( sub {
         $self->await_connectable( $self->{bind_host}, $self->{ports}{federation} );
      });
   }

   # echo the process output if -S was given
   if( $self->{print_output} ) {
      $_->print_output = 1 for values %{ $self->{proc_info} // {} };
   }

   return $started->else( sub {
      die "Unable to start pocketserver $idx: $_[0]\n";
   })->on_done( sub {
      $output->diag( "Started pocketserver $idx (client $self->{ports}{client}, federation $self->{ports}{federation})" );
   });
}

# The config file, in pocketserver's own TOML format (`pocketserver init FILE`
# writes every key with its default; unknown keys are refused, so only keys
# that exist are written here). SyTest's application services go into
# [appservices], its mail server (tests/04mail-server.pl, plain SMTP on
# bind_host) into [email], its mock reCAPTCHA verifier into [registration] and its
# mock CAS server into [cas].
sub _get_config
{
   my $self = shift;
   my ( $ca_file, $db_path ) = @_;

   my $hs_dir    = $self->{hs_dir};
   my $bind_host = $self->{bind_host};
   my @loopback  = ( "127.0.0.0/8", "::1/128" );

   # Application services: SyTest writes a registration file for each of its
   # fake ASes (tests/05homeserver.pl) and hands the paths to configure().
   my @appservices = @{ $self->{app_service_config_files} // [] };

   return [
      # top-level keys
      [ undef, {
         server_name      => $self->server_name,
         public_baseurl   => $self->public_baseurl . "/",
         data_dir         => $hs_dir,
         database_path    => $db_path,
         # created by the server on first start if missing
         signing_key_path => "$hs_dir/signing.key",
         # the TLS listener's cert/key: signed by SyTest's CA for bind_host
         tls_cert_path    => $self->{paths}{tls_cert},
         tls_key_path     => $self->{paths}{tls_key},
         log_level        => "info",
      } ],
      [ "[listeners]", {
         address   => $bind_host,
         port      => 0 + $self->{ports}{client},
         tls       => ( $self->{client_tls} ? JSON::true : JSON::false ),
         resources => [ "client" ],
      } ],
      [ "[listeners]", {
         address   => $bind_host,
         port      => 0 + $self->{ports}{federation},
         tls       => JSON::true,
         resources => [ "federation" ],
      } ],
      [ "registration", {
         mode => "open", allow_guests => JSON::true,
         # SyTest's mock siteverify API (tests/05homeserver.pl). As with Synapse's
         # driver, which sets the keys but not enable_registration_captcha, the
         # CAPTCHA is checked when a client offers it but not required.
         ( $self->{recaptcha_config} ? (
            recaptcha_public_key     => $self->{recaptcha_config}{public_key},
            recaptcha_private_key    => $self->{recaptcha_config}{private_key},
            recaptcha_siteverify_api => $self->{recaptcha_config}{siteverify_api},
            require_recaptcha        => JSON::false,
         ) : () ),
      } ],
      # SyTest's mock CAS server (tests/05homeserver.pl gives its server_url; the
      # service URL is public_baseurl, as Synapse's default).
      ( $self->{cas_config} ? ( [ "cas", {
         enabled    => JSON::true,
         server_url => $self->{cas_config}{server_url},
         ( $self->{cas_config}{service_url} ? ( service_url => $self->{cas_config}{service_url} ) : () ),
      } ] ) : () ),
      [ "rate_limits", { enabled => JSON::false } ],
      # everything SyTest runs (URL preview targets included) is on loopback
      [ "media", { url_preview_ip_allowlist => [ @loopback ] } ],
      # Outbound TLS: SyTest's fake remote homeservers and the other
      # pocketserver are on loopback with certs from SyTest's CA.
      [ "federation", {
         verify_tls        => ( $self->{verify_tls} ? JSON::true : JSON::false ),
         extra_ca_file     => $ca_file,
         allowed_ip_ranges => [ @loopback ],
      } ],
      ( @appservices ? [ "appservices", { registration_files => [ @appservices ] } ] : () ),
      # MSC2228 self-destructing messages, as SyTest's Synapse config turns on
      # (enable_ephemeral_messages): off by default in pocketserver.
      [ "experimental", { msc2228_self_destruct => JSON::true } ],
      # Validation mails go to SyTest's SMTP server (no TLS), as Synapse's are.
      ( $self->{smtp_server_config} ? ( [ "email", {
         smtp_host  => $self->{smtp_server_config}{host},
         smtp_port  => 0 + $self->{smtp_server_config}{port},
         tls        => "none",
         notif_from => "pocketserver\@localhost",
      } ] ) : () ),
   ];
}

# Minimal TOML writer for the structure above: a list of [ table-name, {...} ]
# where the name is undef (top level), "name" ([name]) or "[name]"
# ([[name]], an array of tables). Values: strings, integers (all-digit
# scalars), JSON::true/false, and arrays of those.
sub _toml_value
{
   my ( $v ) = @_;
   return "[" . join( ", ", map { _toml_value( $_ ) } @$v ) . "]" if ref $v eq "ARRAY";
   return( $v ? "true" : "false" ) if JSON::is_bool( $v );
   return $v if $v =~ m/^-?[0-9]+\z/;
   return JSON->new->allow_nonref->ascii->encode( "$v" );  # a TOML basic string
}

sub _write_toml
{
   my $self = shift;
   my ( $relpath, $tables ) = @_;

   my $text = "# written by SyTest's Pocketserver.pm\n";
   foreach my $t ( @$tables ) {
      my ( $name, $kv ) = @$t;
      $text .= "\n[$name]\n" if defined $name;
      $text .= "$_ = " . _toml_value( $kv->{$_} ) . "\n" for sort keys %$kv;
   }

   my $path = "$self->{hs_dir}/$relpath";
   write_binary( $path, $text );
   return $path;
}

# Every line the server prints also goes to <hs_dir>/pocketserver.log.
sub _on_output_line
{
   my $self = shift;
   my ( $proc_info, $line ) = @_;
   print { $self->{log_fh} } "$line\n" if $self->{log_fh};
   $self->SUPER::_on_output_line( $proc_info, $line );
}

1;
