# Every input is handed to the provider-free pop_settings module, which validates it;
# its tests (modules/pop_settings/tests) cover each validation without the provider.

variable "name" {
  description = "The PoP's fleet name, e.g. \"fra-1\" (lowercase letters, digits, hyphens; 2-22 characters)."
  type        = string
}

variable "region" {
  description = "The Linode region the PoP runs in, e.g. \"eu-central\"."
  type        = string
}

variable "instance_type" {
  description = "The Linode plan, e.g. \"g6-standard-1\"."
  type        = string
  default     = "g6-standard-1"
}

variable "image" {
  description = "The image the PoP is installed from; Ansible configures it afterwards."
  type        = string
  default     = "linode/debian12"
}

variable "authorized_keys" {
  description = "SSH public keys put on the PoP's root account at creation; Ansible logs in with one of them."
  type        = list(string)
}

variable "dns_zone" {
  description = "The Linode DNS zone that holds the per-PoP records, e.g. \"example.social\"."
  type        = string
}

variable "dns_zone_id" {
  description = "The Linode id of dns_zone (the linode_domain data source gives it)."
  type        = number
}

variable "pop_record_subdomain" {
  description = "The label under dns_zone holding one record per PoP: with \"pops\", PoP fra-1 answers as fra-1.pops.<dns_zone>."
  type        = string
  default     = "pops"
}

variable "dns_ttl" {
  description = "TTL in seconds of the per-PoP records; one of the values Linode DNS accepts."
  type        = number
  default     = 300
}

variable "publish_ipv6" {
  description = "Publish an AAAA record for the PoP besides the A record."
  type        = bool
  default     = true
}

variable "mesh_cidrs" {
  description = "Address ranges of the mesh; only these reach the admin port and, besides operator_ssh_cidrs, SSH. Defaults to Tailscale's ranges."
  type        = list(string)
  default     = ["100.64.0.0/10", "fd7a:115c:a1e0::/48"]
}

variable "operator_ssh_cidrs" {
  description = "Address ranges that may reach SSH over the public interface (for the first Ansible run, before the PoP is on the mesh). Empty: SSH only over the mesh."
  type        = list(string)
  default     = []
}

variable "admin_port" {
  description = "TCP port of edgecache's admin listener; reachable only from mesh_cidrs."
  type        = number
  default     = 9901
}

variable "shield_port" {
  description = "TCP port of edgecache's shield listener when this PoP shields the others (reachable only from mesh_cidrs); null when it does not."
  type        = number
  default     = null
}

variable "allow_tailscale_direct" {
  description = "Open tailscale_udp_port to the internet so the mesh node can connect directly instead of through relays."
  type        = bool
  default     = true
}

variable "tailscale_udp_port" {
  description = "UDP port the PoP's Tailscale node listens on."
  type        = number
  default     = 41641
}

variable "extra_tags" {
  description = "Tags added to the PoP's Linode resources besides edgecache, edgecache-pop, pop-<name> and region-<region>."
  type        = list(string)
  default     = []
}

variable "user_data" {
  description = "Optional cloud-init user data (plain text; it is base64-encoded here). Null leaves the image as it is, for Ansible to configure."
  type        = string
  default     = null
}
