variable "name" {
  description = "The PoP's fleet name, e.g. \"fra-1\": lowercase letters, digits and hyphens, 2 to 22 characters, starting with a letter. It becomes the host name in the Ansible inventory and part of every label."
  type        = string

  validation {
    # 22 characters keeps "edgecache-<name>" within Linode's 32-character firewall label limit.
    condition     = can(regex("^[a-z][a-z0-9-]{0,20}[a-z0-9]$", var.name)) && !strcontains(var.name, "--")
    error_message = "name must be 2-22 characters of lowercase letters, digits and single hyphens, starting with a letter and not ending with a hyphen (e.g. \"fra-1\")."
  }
}

variable "region" {
  description = "The Linode region the PoP runs in, e.g. \"eu-central\" or \"de-fra-2\"."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}-[a-z]+(-[0-9]+)?$", var.region))
    error_message = "region must be a Linode region id such as \"eu-central\", \"us-ord\" or \"de-fra-2\"."
  }
}

variable "instance_type" {
  description = "The Linode plan, e.g. \"g6-standard-1\"."
  type        = string

  validation {
    condition     = can(regex("^g[0-9]+-(nanode|standard|dedicated|highmem|premium)-[0-9]+$", var.instance_type))
    error_message = "instance_type must be a Linode plan id such as \"g6-nanode-1\", \"g6-standard-2\" or \"g6-dedicated-2\"."
  }
}

variable "image" {
  description = "The image the PoP is installed from. Ansible configures it afterwards, so it must be a distribution the playbook supports."
  type        = string

  validation {
    condition     = can(regex("^(linode|private)/[a-z0-9._-]+$", var.image))
    error_message = "image must be a Linode image id such as \"linode/debian12\" or \"private/12345\"."
  }
}

variable "authorized_keys" {
  description = "SSH public keys put on the PoP's root account at creation; Ansible logs in with one of them."
  type        = list(string)

  validation {
    condition     = length(var.authorized_keys) > 0 && alltrue([for key in var.authorized_keys : can(regex("^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh.com) [A-Za-z0-9+/=]+( .*)?$", key))])
    error_message = "authorized_keys must hold at least one OpenSSH public key (\"ssh-ed25519 AAAA... comment\")."
  }
}

variable "dns_zone" {
  description = "The DNS zone (hosted in Linode DNS) that holds the per-PoP records, e.g. \"example.social\"."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]*[a-z0-9])?\\.)+[a-z]{2,}$", var.dns_zone))
    error_message = "dns_zone must be a lowercase domain name without a trailing dot, e.g. \"example.social\"."
  }
}

variable "pop_record_subdomain" {
  description = "The label under dns_zone that holds one record per PoP: with \"pops\", PoP fra-1 is fra-1.pops.<dns_zone>. Empty puts the PoP records directly under the zone. The geo-routed name's pool points at these names."
  type        = string
  default     = "pops"

  validation {
    condition     = var.pop_record_subdomain == "" || can(regex("^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$", var.pop_record_subdomain))
    error_message = "pop_record_subdomain must be empty or one or more lowercase DNS labels, e.g. \"pops\"."
  }
}

variable "dns_ttl" {
  description = "TTL in seconds of the per-PoP records. Kept short so a replaced PoP is picked up quickly."
  type        = number
  default     = 300

  validation {
    # Linode DNS rounds any other value to one of these, which would show as a permanent diff.
    condition     = contains([30, 120, 300, 3600, 7200, 14400, 28800, 57600, 86400, 172800, 345600, 604800, 1209600, 2419200], var.dns_ttl)
    error_message = "dns_ttl must be one of the TTLs Linode DNS accepts: 30, 120, 300, 3600, 7200, 14400, 28800, 57600, 86400, 172800, 345600, 604800, 1209600 or 2419200."
  }
}

variable "mesh_cidrs" {
  description = "Address ranges of the mesh the PoP shares with the core. Only these reach the admin port. The default is Tailscale's IPv4 and IPv6 ranges."
  type        = list(string)
  default     = ["100.64.0.0/10", "fd7a:115c:a1e0::/48"]

  validation {
    condition     = length(var.mesh_cidrs) > 0 && alltrue([for cidr in var.mesh_cidrs : can(cidrhost(cidr, 0))])
    error_message = "mesh_cidrs must hold at least one CIDR block, e.g. \"100.64.0.0/10\"."
  }

  validation {
    # The admin listener can purge the cache and reload certificates: it must never be public.
    condition     = alltrue([for cidr in var.mesh_cidrs : !contains(["0.0.0.0/0", "::/0"], cidr)])
    error_message = "mesh_cidrs must not contain 0.0.0.0/0 or ::/0: that would open the admin port to the internet."
  }
}

variable "operator_ssh_cidrs" {
  description = "Address ranges that may reach SSH over the public interface, so Ansible can configure a PoP before it has joined the mesh. SSH from the mesh is always allowed. Empty means SSH only over the mesh."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for cidr in var.operator_ssh_cidrs : can(cidrhost(cidr, 0))])
    error_message = "operator_ssh_cidrs must hold CIDR blocks, e.g. \"203.0.113.7/32\"."
  }

  validation {
    condition     = alltrue([for cidr in var.operator_ssh_cidrs : !contains(["0.0.0.0/0", "::/0"], cidr)])
    error_message = "operator_ssh_cidrs must not contain 0.0.0.0/0 or ::/0: SSH stays closed to the internet."
  }
}

variable "admin_port" {
  description = "TCP port of edgecache's admin listener (admin.address in its config). Reachable only from mesh_cidrs."
  type        = number
  default     = 9901

  validation {
    condition     = var.admin_port >= 1 && var.admin_port <= 65535 && floor(var.admin_port) == var.admin_port && !contains([22, 80, 443], var.admin_port)
    error_message = "admin_port must be a TCP port from 1 to 65535 other than 22, 80 and 443, which have rules of their own."
  }
}

variable "shield_port" {
  description = "TCP port of edgecache's shield listener on a PoP that shields the others; reachable only from mesh_cidrs. null: the PoP is no shield."
  type        = number
  default     = null

  validation {
    condition     = var.shield_port == null ? true : (var.shield_port >= 1 && var.shield_port <= 65535 && floor(var.shield_port) == var.shield_port && !contains([22, 80, 443, var.admin_port], var.shield_port))
    error_message = "shield_port must be a TCP port from 1 to 65535 other than 22, 80, 443 and admin_port."
  }
}

variable "allow_tailscale_direct" {
  description = "Open tailscale_udp_port to the internet so the PoP's mesh node can make direct connections instead of going through relays."
  type        = bool
  default     = true
}

variable "tailscale_udp_port" {
  description = "UDP port the PoP's Tailscale node listens on for direct connections."
  type        = number
  default     = 41641

  validation {
    condition     = var.tailscale_udp_port >= 1 && var.tailscale_udp_port <= 65535 && floor(var.tailscale_udp_port) == var.tailscale_udp_port
    error_message = "tailscale_udp_port must be a port from 1 to 65535."
  }
}

variable "extra_tags" {
  description = "Tags added to the PoP's Linode resources besides the ones every PoP gets (edgecache, edgecache-pop, pop-<name>, region-<region>)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for tag in var.extra_tags : length(tag) >= 3 && length(tag) <= 50])
    error_message = "Each of extra_tags must be 3 to 50 characters long, as Linode requires."
  }
}
