locals {
  # The names the Ansible roles read; they must not change without the roles.
  hosts = {
    for name, pop in var.pops : name => {
      ansible_host            = var.connect_via == "mesh" ? pop.mesh_hostname : pop.public_ipv4
      ansible_user            = var.ssh_user
      edgecache_pop_name      = name
      edgecache_region        = pop.region
      edgecache_mesh_hostname = pop.mesh_hostname
      edgecache_public_fqdn   = pop.fqdn
      edgecache_public_ipv4   = pop.public_ipv4
      edgecache_public_ipv6   = pop.public_ipv6
      edgecache_shield        = pop.shield
    }
  }

  inventory = {
    all = {
      children = {
        edgecache_pops = {
          hosts = local.hosts
        }
      }
    }
  }
}
