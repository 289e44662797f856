//! `berth create`: a new machine, made whole or not at all.

use berth_provisioners::driver::qemu::{self, Accel};
use berth_provisioners::driver::EngineOptions;
use berth_provisioners::driver::{ec2, generic};
use berth_provisioners::{DriverConfig, MachineContext};

use super::{progress, waiting};
use crate::cli::CreateArgs;
use crate::error::CliError;
use crate::record::MachineRecord;
use crate::store::{validate_name, Store, StoreError};

/// Creates machine `args.name` with `args.driver` and starts it. If any
/// step after the pre-create checks fails, what was made is removed again.
pub(crate) async fn create(store: &Store, args: CreateArgs) -> Result<(), CliError> {
    let name = args.name.clone();
    validate_name(&name)?;
    let config = driver_config(&args)?;
    let lock = store.lock(&name, waiting(&name))?;
    if store.exists(&name) {
        return Err(StoreError::AlreadyExists(name).into());
    }
    let driver = config.open(MachineContext {
        name: name.clone(),
        dir: store.machine_dir(&name),
    });

    progress("Running pre-create checks...");
    driver
        .pre_create_check()
        .await
        .map_err(CliError::PreCreate)?;

    progress(&format!("Creating machine {name:?} ({})...", driver.name()));
    let record = MachineRecord::new(&name, config);
    store.create(&record, &lock)?;
    if let Err(e) = driver.create().await {
        // Leave no half-made machine behind.
        if let Err(cleanup) = driver.remove().await {
            tracing::warn!("while undoing the failed create: {cleanup}");
        }
        if let Err(cleanup) = store.remove(&name, &lock) {
            tracing::warn!("while undoing the failed create: {cleanup}");
        }
        lock.remove();
        return Err(CliError::driver("create", &name, e));
    }
    progress(&format!(
        "Machine {name:?} is running. To point docker at it, run: berth env {name}"
    ));
    Ok(())
}

/// The driver's settings from `--driver` and the flags that tune it; a
/// flag the driver does not take is refused rather than ignored.
fn driver_config(args: &CreateArgs) -> Result<DriverConfig, CliError> {
    let mut config =
        DriverConfig::default_for(&args.driver).ok_or_else(|| CliError::UnknownDriver {
            name: args.driver.clone(),
            known: DriverConfig::NAMES.join(", "),
        })?;
    let engine = EngineOptions {
        insecure_registries: args.engine_insecure_registry.clone(),
        registry_mirrors: args.engine_registry_mirror.clone(),
        labels: args.engine_label.clone(),
        env: args.engine_env.clone(),
    };
    engine.validate().map_err(CliError::Usage)?;
    // Which flags each driver takes; any other given is refused.
    let ec2_flags = [
        (
            "--amazonec2-access-key",
            args.amazonec2_access_key.is_some(),
        ),
        (
            "--amazonec2-secret-key",
            args.amazonec2_secret_key.is_some(),
        ),
        (
            "--amazonec2-session-token",
            args.amazonec2_session_token.is_some(),
        ),
        ("--amazonec2-region", args.amazonec2_region.is_some()),
        ("--amazonec2-ami", args.amazonec2_ami.is_some()),
        (
            "--amazonec2-instance-type",
            args.amazonec2_instance_type.is_some(),
        ),
        ("--amazonec2-ssh-user", args.amazonec2_ssh_user.is_some()),
        ("--amazonec2-subnet-id", args.amazonec2_subnet_id.is_some()),
        ("--amazonec2-vpc-id", args.amazonec2_vpc_id.is_some()),
        (
            "--amazonec2-private-ip",
            args.amazonec2_private_ip.is_some(),
        ),
        (
            "--amazonec2-private-address-only",
            args.amazonec2_private_address_only,
        ),
        (
            "--amazonec2-ssh-keypath",
            args.amazonec2_ssh_keypath.is_some(),
        ),
    ];
    let mut given: Vec<(&str, bool, &[&str])> = vec![
        ("--cpus", args.cpus.is_some(), &[qemu::NAME]),
        ("--memory", args.memory.is_some(), &[qemu::NAME]),
        ("--disk-size", args.disk_size.is_some(), &[qemu::NAME]),
        ("--qemu-accel", args.qemu_accel.is_some(), &[qemu::NAME]),
        (
            "--qemu-boot-timeout",
            args.qemu_boot_timeout.is_some(),
            &[qemu::NAME],
        ),
        (
            "--engine-insecure-registry",
            !args.engine_insecure_registry.is_empty(),
            &[qemu::NAME, generic::NAME, ec2::NAME],
        ),
        (
            "--generic-ip-address",
            args.generic_ip_address.is_some(),
            &[generic::NAME],
        ),
        (
            "--generic-ssh-user",
            args.generic_ssh_user.is_some(),
            &[generic::NAME],
        ),
        (
            "--generic-ssh-key",
            args.generic_ssh_key.is_some(),
            &[generic::NAME],
        ),
        (
            "--generic-ssh-port",
            args.generic_ssh_port.is_some(),
            &[generic::NAME],
        ),
        (
            "--ssh-known-hosts / --ssh-accept-new-host-key",
            args.ssh_known_hosts.is_some() || args.ssh_accept_new_host_key,
            &[generic::NAME],
        ),
    ];
    given.extend(
        ec2_flags
            .iter()
            .map(|(f, set)| (*f, *set, &[ec2::NAME][..])),
    );
    if let Some((flag, _, _)) = given
        .iter()
        .find(|(_, set, drivers)| *set && !drivers.contains(&config.name()))
    {
        return Err(CliError::Usage(format!(
            "{flag} does not apply to the {} driver",
            args.driver
        )));
    }
    match &mut config {
        DriverConfig::Qemu(qemu) => {
            if let Some(cpus) = args.cpus {
                qemu.cpus = cpus;
            }
            if let Some(memory) = args.memory {
                qemu.memory_mb = memory;
            }
            if let Some(disk) = args.disk_size {
                qemu.disk_size_gb = disk;
            }
            if let Some(accel) = &args.qemu_accel {
                qemu.accel = Accel::parse(accel).ok_or_else(|| {
                    CliError::Usage(format!(
                        "unknown --qemu-accel {accel:?}; use kvm, hvf, whpx, tcg or auto"
                    ))
                })?;
            }
            if let Some(timeout) = args.qemu_boot_timeout {
                qemu.boot_timeout_secs = timeout;
            }
            qemu.engine = engine;
        }
        DriverConfig::Native(native) => native.engine = engine,
        DriverConfig::Generic(generic) => {
            generic.ip_address = args.generic_ip_address.clone().ok_or_else(|| {
                CliError::Usage("the generic driver needs --generic-ip-address".into())
            })?;
            if let Some(user) = &args.generic_ssh_user {
                generic.ssh_user = user.clone();
            }
            if let Some(port) = args.generic_ssh_port {
                generic.ssh_port = port;
            }
            generic.ssh_key = match &args.generic_ssh_key {
                Some(key) => absolute(key)?,
                None => berth_provisioners::ssh::default_key().ok_or_else(|| {
                    CliError::Usage(
                        "no SSH key: give one with --generic-ssh-key (none in ~/.ssh)".into(),
                    )
                })?,
            };
            generic.known_hosts = args.ssh_known_hosts.as_deref().map(absolute).transpose()?;
            generic.accept_new_host_key = args.ssh_accept_new_host_key;
            generic.engine = engine;
        }
        DriverConfig::Ec2(ec2) => {
            let set = |to: &mut Option<String>, from: &Option<String>| {
                if from.is_some() {
                    *to = from.clone();
                }
            };
            set(&mut ec2.access_key, &args.amazonec2_access_key);
            set(&mut ec2.secret_key, &args.amazonec2_secret_key);
            set(&mut ec2.session_token, &args.amazonec2_session_token);
            set(&mut ec2.endpoint, &args.amazonec2_endpoint);
            set(&mut ec2.subnet_id, &args.amazonec2_subnet_id);
            set(&mut ec2.vpc_id, &args.amazonec2_vpc_id);
            set(&mut ec2.private_ip, &args.amazonec2_private_ip);
            if let Some(region) = &args.amazonec2_region {
                ec2.region = region.clone();
            }
            ec2.ami = args
                .amazonec2_ami
                .clone()
                .ok_or_else(|| CliError::Usage("the ec2 driver needs --amazonec2-ami".into()))?;
            if let Some(t) = &args.amazonec2_instance_type {
                ec2.instance_type = t.clone();
            }
            if let Some(u) = &args.amazonec2_ssh_user {
                ec2.ssh_user = u.clone();
            }
            ec2.private_address_only = args.amazonec2_private_address_only;
            ec2.ssh_key = args
                .amazonec2_ssh_keypath
                .as_deref()
                .map(absolute)
                .transpose()?;
            ec2.engine = engine;
        }
    }
    Ok(config)
}

/// `path` made absolute against the current directory: the record must
/// not depend on where a later command runs.
fn absolute(path: &std::path::Path) -> Result<std::path::PathBuf, CliError> {
    std::path::absolute(path).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}
