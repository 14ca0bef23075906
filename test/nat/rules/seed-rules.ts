/**
 * The seed router's `iptables -t nat -S`, verbatim (shared/seed/neutron-nat.rules, DESIGN.md),
 * kept here so the tests do not depend on files outside the repository.
 */
export const SEED_RULES = [
  "-P PREROUTING ACCEPT",
  "-P INPUT ACCEPT",
  "-P OUTPUT ACCEPT",
  "-P POSTROUTING ACCEPT",
  "-N neutron-postrouting-bottom",
  "-N neutron-vpn-agen-OUTPUT",
  "-N neutron-vpn-agen-POSTROUTING",
  "-N neutron-vpn-agen-PREROUTING",
  "-N neutron-vpn-agen-float-snat",
  "-N neutron-vpn-agen-snat",
  "-A PREROUTING -j neutron-vpn-agen-PREROUTING",
  "-A OUTPUT -j neutron-vpn-agen-OUTPUT",
  "-A POSTROUTING -j neutron-vpn-agen-POSTROUTING",
  "-A POSTROUTING -j neutron-postrouting-bottom",
  "-A neutron-postrouting-bottom -j neutron-vpn-agen-snat",
  "-A neutron-vpn-agen-OUTPUT -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2",
  "-A neutron-vpn-agen-POSTROUTING ! -i qg-e76de35e-90 ! -o qg-e76de35e-90 -m conntrack ! --ctstate DNAT -j ACCEPT",
  "-A neutron-vpn-agen-PREROUTING -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9697",
  "-A neutron-vpn-agen-PREROUTING -d 9.186.100.129/32 -j DNAT --to-destination 10.0.0.2",
  "-A neutron-vpn-agen-float-snat -s 10.0.0.2/32 -j SNAT --to-source 9.186.100.129",
  "-A neutron-vpn-agen-snat -j neutron-vpn-agen-float-snat",
  "-A neutron-vpn-agen-snat -s 10.0.0.0/24 -j SNAT --to-source 9.186.100.2",
].join("\n") + "\n";

export const TENANT_PORT = "qr-694450d6-f6";
export const GATEWAY_PORT = "qg-e76de35e-90";
/** A second tenant network port, as Neutron adds one per subnet. */
export const OTHER_TENANT_PORT = "qr-aaaa0000-00";
