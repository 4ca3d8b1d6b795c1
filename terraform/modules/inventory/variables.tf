variable "pops" {
  description = "The PoPs as built: for each PoP name, its region, public addresses, mesh host name, DNS name and whether it is a shield."
  type = map(object({
    region        = string
    public_ipv4   = string
    public_ipv6   = string
    mesh_hostname = string
    fqdn          = string
    shield        = optional(bool, false)
  }))

  validation {
    condition     = alltrue([for pop in values(var.pops) : can(cidrhost("${pop.public_ipv4}/32", 0))])
    error_message = "Each PoP's public_ipv4 must be an IPv4 address."
  }

  validation {
    condition     = alltrue([for pop in values(var.pops) : pop.public_ipv6 == "" || can(cidrhost("${pop.public_ipv6}/128", 0))])
    error_message = "Each PoP's public_ipv6 must be an IPv6 address without a prefix length, or empty."
  }
}

variable "connect_via" {
  description = "How Ansible reaches the PoPs: \"public\" uses the public IPv4 address (needed before a PoP has joined the mesh, through operator_ssh_cidrs), \"mesh\" uses the mesh host name."
  type        = string
  default     = "public"

  validation {
    condition     = contains(["public", "mesh"], var.connect_via)
    error_message = "connect_via must be \"public\" or \"mesh\"."
  }
}

variable "ssh_user" {
  description = "The account Ansible logs in as; the image's root account holds authorized_keys."
  type        = string
  default     = "root"

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]*$", var.ssh_user))
    error_message = "ssh_user must be a Unix account name."
  }
}
